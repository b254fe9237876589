"""The reference engine behind the seam (``InstanceEngine``): our ``AsyncEngine``, its KV
receiver, and the three roles that drive them (prefill: compute and send; decode: reserve,
land or fall back, decode; pull: land a cached prefix)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prfaas.config import EngineConfig
from prfaas.decode.role import DecodeRole
from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.profiling import profile_engine
from prfaas.kvcache.spec import kv_bytes_block_rounded
from prfaas.messages import (
    BlockCounts,
    CacheEventMsg,
    DecodeCommand,
    PrefillCommand,
    PrefillResult,
    ProfileRequest,
    ProfileResult,
    PullCommand,
    PullResult,
    Role,
    TokenEvent,
)
from prfaas.prefill.kv_export import max_side_bytes
from prfaas.prefill.role import LinkSettings, PrefillRole
from prfaas.transfer.auth import kv_auth_key
from prfaas.transfer.config import ReceiverConfig
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.tls import PLAINTEXT, Plaintext, TlsConfig, client_context, server_context
from prfaas.worker.engine_api import EngineCheck, EngineFacts, InstanceStats
from prfaas.worker.pull import PullRole

if TYPE_CHECKING:
    from prfaas.worker.config import WorkerConfig


@dataclass(frozen=True)
class KvSettings:
    """Where this instance receives KV and how it proves itself to peers."""

    host: str = "127.0.0.1"
    port: int = 0
    auth_key: bytes | None = None  # kv_auth_key(cluster token): required of every peer
    tls_server: ssl.SSLContext | Plaintext = PLAINTEXT
    tls_client: ssl.SSLContext | None = None  # None: cannot send over a TLS link
    link_rate_gbps: dict[str, float] = field(default_factory=dict)


def for_worker(config: WorkerConfig) -> ReferenceEngine:
    """The reference engine a worker hosts: its KV receiver and sender use the cluster's
    certificates (if any), and every KV peer must prove the cluster token."""
    tls_server: ssl.SSLContext | Plaintext = PLAINTEXT
    tls_client: ssl.SSLContext | None = None
    if config.certs_dir is not None:
        tls = TlsConfig.from_dir(config.certs_dir, config.cluster)
        tls_server, tls_client = server_context(tls), client_context(tls)
    kv = KvSettings(
        host=config.kv_host,
        port=config.kv_port,
        auth_key=kv_auth_key(config.cluster_token),
        tls_server=tls_server,
        tls_client=tls_client,
        link_rate_gbps=dict(config.link_rate_gbps),
    )
    return ReferenceEngine(config.engine, kv)


class ReferenceEngine:
    def __init__(self, config: EngineConfig, kv: KvSettings, engine: Engine | None = None) -> None:
        """``engine``: an already loaded engine (tests); else one is loaded from ``config``."""
        engine = engine or Engine(config)
        self.engine = AsyncEngine(engine)
        max_transfer_bytes, max_total_bytes = ReceiverConfig.pool_budgets(
            largest_request_bytes(engine), pool_bytes(engine)
        )
        self.receiver = KvReceiver(
            ReceiverConfig(
                host=kv.host,
                port=kv.port,
                fingerprint=bytes.fromhex(engine.fingerprint),
                auth_key=kv.auth_key,
                max_transfer_bytes=max_transfer_bytes,
                max_total_bytes=max_total_bytes,
            ),
            tls=kv.tls_server,
        )
        self.prefill_role = PrefillRole(
            self.engine, LinkSettings(kv.link_rate_gbps), kv.tls_client, auth_key=kv.auth_key
        )
        self.decode_role = DecodeRole(self.engine, self.receiver, engine.layout)
        self.pull_role = PullRole(self.engine, self.receiver, engine.layout)
        self._layer_specs = engine.layer_specs  # fixed at load, read by profile()
        host, port = self.receiver.address
        self._facts = EngineFacts(
            fingerprint=engine.fingerprint,
            model_name=str(engine.loaded.folder),
            block_size=engine.kv.block_size,
            max_model_len=engine.max_model_len,
            vocab_size=engine.vocab_size,
            hybrid=engine.hybrid,
            kv_host=host,
            kv_port=port,
        )

    @property
    def facts(self) -> EngineFacts:
        return self._facts

    async def start(self) -> None:
        self.receiver.start()
        self.engine.start()

    async def stop(self) -> None:
        await self.engine.shutdown()
        self.receiver.close()
        self.decode_role.close()

    async def prefill(self, cmd: PrefillCommand) -> PrefillResult:
        return await self.prefill_role.run(cmd)

    def decode(self, cmd: DecodeCommand) -> AsyncIterator[TokenEvent]:
        return self.decode_role.run(cmd)

    def kv_failed(self, request_id: str, reason: str) -> bool:
        return self.decode_role.fail(request_id, reason)

    def set_fault(self, fault: str, on: bool) -> None:
        if on:
            self.decode_role.faults.add(fault)
        else:
            self.decode_role.faults.discard(fault)

    async def pull(self, cmd: PullCommand) -> PullResult:
        return await self.pull_role.run(cmd)

    async def profile(self, request: ProfileRequest) -> ProfileResult:
        return await profile_engine(
            self.engine,
            request,
            vocab_size=self._facts.vocab_size,
            layer_specs=self._layer_specs,
            block_size=self._facts.block_size,
        )

    def stats(self) -> InstanceStats:
        s = self.engine.stats()
        return InstanceStats(
            num_waiting=s.num_waiting,
            num_running=s.num_running,
            num_parked=s.num_parked,
            kv_usage=min(1.0, s.kv_usage),
            fallbacks=s.fallbacks,
            queued_tokens=s.num_queued_tokens,
            links=self.prefill_role.link_reports(),
        )

    def drain_cache_events(self) -> list[CacheEventMsg]:
        return [
            CacheEventMsg(block_hash=e.block_hash.hex(), stored=e.stored, snapshot=e.snapshot)
            for e in self.engine.drain_cache_events()
        ]

    async def check(self) -> EngineCheck:
        """Pool integrity and counts are read on the engine thread, the rest here."""
        error, blocks, (waiting, running, parked) = await self.engine.call(_engine_side)
        return EngineCheck(
            integrity_error=error,
            blocks=blocks,
            num_waiting=waiting,
            num_running=running,
            num_parked=parked,
            num_streams=self.engine.num_streams,
            kv_connections=self.receiver.num_connections,
            kv_landings=self.receiver.num_transfers,
            kv_allocated_bytes=self.receiver.allocated_bytes,
            kv_awaited=self.decode_role.num_awaiting_kv,
            kv_sending=self.prefill_role.num_sending,
        )

    async def switch_role(self, role: Role) -> None:
        """Nothing to do: this engine serves either role's commands once drained."""

    async def free_cache(self) -> int:
        """Evictions become cache events: the kv index forgets the blocks with the next
        heartbeat."""
        return await self.engine.call(lambda engine: engine.kv.reset_cache())


def _engine_side(engine: Engine) -> tuple[str | None, BlockCounts, tuple[int, int, int]]:
    try:
        engine.check_integrity()
        error = None
    except AssertionError as e:
        error = str(e) or type(e).__name__
    pool, sched = engine.kv.pool, engine.scheduler
    free = [b for b in range(pool.num_blocks) if pool.ref_counts[b] == 0]
    blocks = BlockCounts(
        total=pool.num_blocks,
        free=len(free),
        cached=sum(1 for b in free if pool.hashes[b] is not None),
        leased=pool.num_blocks - len(free),
    )
    return error, blocks, (len(sched.waiting), len(sched.running), len(sched.parked))


def pool_bytes(engine: Engine) -> int:
    """What the transfers landing at once into this engine's pool can carry: the KV every
    block holds, and the layers after the KV (``max_side_bytes``) of one transfer per block.
    A transfer lands into blocks reserved for it, at least one, and its side layers grow
    with its tokens: at most ``max_side_bytes(block_size)`` per block it holds."""
    block_size, num_blocks = engine.kv.block_size, engine.kv.pool.num_blocks
    kv = kv_bytes_block_rounded(engine.layer_specs, num_blocks * block_size, block_size)
    return kv + num_blocks * max_side_bytes(block_size)


def largest_request_bytes(engine: Engine) -> int:
    """The largest transfer to this engine (``raw_bytes``): the KV of the longest request it
    can hold (every block of its pool, or the model's length if shorter; one state per linear
    layer), then its first token and logprobs at the most alternatives a request may ask
    for (``max_side_bytes``)."""
    num_tokens = min(engine.kv.pool.num_blocks * engine.kv.block_size, engine.max_model_len)
    kv = kv_bytes_block_rounded(engine.layer_specs, num_tokens, engine.kv.block_size)
    return kv + max_side_bytes(num_tokens)
