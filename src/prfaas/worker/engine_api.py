"""The engine seam: what a worker process needs from the engine it hosts.

A worker process hosts one instance. It registers with the gateways, heartbeats, keeps the
cache-event log and serves the HTTP routes (``worker/app.py``); everything about computing
and moving KV is behind ``InstanceEngine``. The reference engine (``worker/reference.py``:
our ``AsyncEngine`` with its KV receiver and the prefill, decode and pull roles) is the
first implementation. A second one, say vLLM whose KV moves through a KV connector, plugs
in here without touching the app: it builds its own engine and connector, speaks the same
typed messages (``prfaas.messages``) and reports the same facts and counters.

Contract (every implementation):
- ``facts`` is fixed once constructed (before ``start``) and read from any thread.
- ``start``/``stop`` are awaited on the worker's event loop; ``stop`` aborts what runs
  (open ``decode`` streams end with an error) and frees every block and connection.
- ``prefill`` computes the prompt and ships its KV to ``cmd.target`` before returning; it
  never raises for a failed transfer or a missed deadline (``ok=False`` with the reason),
  and on ``ok=False`` it holds nothing for the request. ``cached_tokens`` is this engine's
  real prefix hit for the prompt.
- ``decode`` streams the request's ``TokenEvent``s, the last one ``finished``. With
  ``expect_kv`` it holds room for the prompt's KV, lands it when it comes (only KV computed
  for this exact prompt, model and tenant), and otherwise prefills here (the fallback):
  the request completes either way. Its first event, before the KV is awaited, says
  whether room is held (``reserved``; False: it prefills here at once and the gateway ships
  no KV). With ``resume_token_ids`` it prefills prompt + those tokens and goes on from them
  as if it had sampled them (decode failover). The first event's ``cached_tokens`` is the prompt
  tokens this engine did not compute itself when it prefilled (0 when the KV landed from
  elsewhere). Input the engine refuses raises ``ValueError`` before any event. A consumer
  that stops iterating aborts the request and frees its blocks.
- ``kv_failed`` tells a waiting ``decode`` its KV will not come: fall back now (False if no
  such request waits).
- ``set_fault`` switches a test-only fault (``FaultSwitch``) on or off; ``ValueError`` for
  one this engine does not have.
- ``pull`` lands a cached prefix shipped by another instance as prefix cache only.
- ``profile`` runs short measured prefills (and a decode batch) on fresh random tokens;
  ``ValueError`` for lengths it cannot serve.
- ``stats`` and ``drain_cache_events`` are cheap and never block on the engine; the events
  come once each, in order.
- ``check`` reports integrity and everything that could leak (``EngineCheck``).
- ``switch_role`` is awaited once no request is waiting, running or parked (the worker
  drains first); the engine then takes the other role's commands.
- ``free_cache`` drops every prefix-cached block no request holds (its model version was
  drained), nothing in use; the reference engine reports the drops as removals in
  ``drain_cache_events``.
- Every await on another process or socket has a deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from prfaas.messages import (
    BlockCounts,
    CacheEventMsg,
    DecodeCommand,
    LinkReport,
    PrefillCommand,
    PrefillResult,
    ProfileRequest,
    ProfileResult,
    PullCommand,
    PullResult,
    Role,
    TokenEvent,
)


@dataclass(frozen=True)
class EngineFacts:
    """What the worker announces at registration (``WorkerInfo``); fixed at load."""

    fingerprint: str  # model fingerprint, hex: part of every block hash and transfer
    model_name: str
    block_size: int  # tokens per KV block
    max_model_len: int
    vocab_size: int
    hybrid: bool  # linear-attention layers: a prefix hit also needs a state snapshot
    kv_host: str  # where this instance receives KV
    kv_port: int


@dataclass(frozen=True)
class InstanceStats:
    """Counters for the heartbeat. ``fallbacks`` counts KV hand-offs that failed and were
    prefilled here instead; ``queued_tokens`` the prompt tokens not yet computed."""

    num_waiting: int = 0
    num_running: int = 0
    num_parked: int = 0  # waiting for KV, or for their KV to be sent
    kv_usage: float = 0.0  # fraction of KV blocks held, 0..1
    fallbacks: int = 0
    queued_tokens: int = 0
    links: list[LinkReport] = field(default_factory=list)  # egress, measured by the sender


@dataclass(frozen=True)
class EngineCheck:
    """The engine's part of ``WorkerCheck`` (field meanings there)."""

    integrity_error: str | None
    blocks: BlockCounts
    num_waiting: int
    num_running: int
    num_parked: int
    num_streams: int
    kv_connections: int
    kv_landings: int
    kv_allocated_bytes: int
    kv_awaited: int
    kv_sending: int


class InstanceEngine(Protocol):
    """One engine hosted by a worker process; contract in the module docstring."""

    @property
    def facts(self) -> EngineFacts: ...

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def prefill(self, cmd: PrefillCommand) -> PrefillResult: ...
    def decode(self, cmd: DecodeCommand) -> AsyncIterator[TokenEvent]: ...
    def kv_failed(self, request_id: str, reason: str) -> bool: ...
    def set_fault(self, fault: str, on: bool) -> None: ...
    async def pull(self, cmd: PullCommand) -> PullResult: ...
    async def profile(self, request: ProfileRequest) -> ProfileResult: ...

    def stats(self) -> InstanceStats: ...
    def drain_cache_events(self) -> list[CacheEventMsg]: ...
    async def check(self) -> EngineCheck: ...
    async def switch_role(self, role: Role) -> None: ...
    async def free_cache(self) -> int:
        """Drop every prefix-cached block no request holds; how many (0 if unknown)."""
        ...
