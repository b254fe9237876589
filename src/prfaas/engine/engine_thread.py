"""The thread that owns one ``Engine``: it runs commands, steps while there is work, and sleeps
on its command queue otherwise. Every engine call of an ``AsyncEngine`` happens here.

Results leave through ``loop.call_soon_threadsafe``: step deltas to ``deliver``, exported KV
payloads to the future waiting for them. Stats and cache events are published after each
round (commands, then at most one step) for the loop to read without touching the engine.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prfaas.engine.engine import Engine, LayerSink
from prfaas.engine.handoff import KvImportError, KvPayload
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.request import Request
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.block_pool import CacheEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")
Command = Callable[[Engine], None]
# deltas of one step, and the cached prompt tokens of requests that got their first delta
Deliver = Callable[[list[TokenDelta], dict[str, int]], None]


@dataclass(frozen=True)
class EngineStats:
    """A snapshot taken on the engine thread after its latest round.

    ``num_prompt_tokens`` and ``num_cached_tokens`` count every request admitted so far
    (their ratio is the prefix hit rate); ``fallbacks`` counts KV hand-offs that failed and
    were prefilled locally instead; ``num_queued_tokens`` is the prompt tokens of waiting
    and running requests not yet computed (the prefill backlog the control loop watches).
    """

    num_waiting: int = 0
    num_running: int = 0
    num_parked: int = 0
    kv_usage: float = 0.0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    fallbacks: int = 0
    num_queued_tokens: int = 0


class EngineError(RuntimeError):
    """The engine failed while stepping, or shut down; the request was aborted."""


class EngineThread:
    def __init__(
        self,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        deliver: Deliver,
        fail_all: Callable[[BaseException], None],
    ) -> None:
        self.engine = engine
        self.stats = EngineStats()
        self._loop, self._deliver, self._fail_all = loop, deliver, fail_all
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="prfaas-engine", daemon=True)
        self._stopping = False
        self._events: list[CacheEvent] = []
        self._events_lock = threading.Lock()
        # Thread-only: requests not yet counted in the stats (counted at their first delta),
        # prefill-only requests whose KV is exported as soon as they have their first token.
        self._uncounted: dict[str, Request] = {}
        self._exports: dict[str, asyncio.Future[KvPayload]] = {}
        # Prefill-only requests streamed layer by layer: only the first token is exported.
        self._first_tokens: dict[str, asyncio.Future[int]] = {}
        self._num_prompt_tokens = 0
        self._num_cached_tokens = 0

    # ---- from the loop ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish the queued commands, then end the thread (blocks until it has)."""
        self._stopping = True
        self._commands.put(lambda _: self._abort_all(EngineError("engine shut down")))
        self._commands.put(None)
        self._thread.join()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    def send(self, command: Command) -> None:
        if not self.running:
            raise EngineError("the engine thread is not running")
        self._commands.put(command)

    def call(self, fn: Callable[[Engine], T]) -> asyncio.Future[T]:
        """Run ``fn(engine)`` on the thread; the future gets its result or its exception."""
        future: asyncio.Future[T] = self._loop.create_future()

        def command(engine: Engine) -> None:
            try:
                value = fn(engine)
            except Exception as exc:  # handed back to the caller
                self._loop.call_soon_threadsafe(settle, future, None, exc)
            else:
                self._loop.call_soon_threadsafe(settle, future, value, None)

        self.send(command)
        return future

    def drain_events(self) -> list[CacheEvent]:
        with self._events_lock:
            events, self._events = self._events, []
        return events

    # ---- commands run on the thread --------------------------------------------------------

    def admit(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        tenant_salt: bytes,
        export_to: asyncio.Future[KvPayload] | None = None,
    ) -> None:
        """Queue a request; with ``export_to``, prefill only and export its KV there."""
        req = self.engine.add_request(
            prompt_token_ids,
            params,
            request_id,
            prefill_only=export_to is not None,
            tenant_salt=tenant_salt,
        )
        self._uncounted[request_id] = req
        if export_to is not None:
            self._exports[request_id] = export_to

    def admit_streamed(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        tenant_salt: bytes,
        sink: LayerSink,
        first_token_to: asyncio.Future[int],
    ) -> None:
        """Queue a prefill-only request whose KV goes to ``sink`` layer by layer
        (``Engine.stream_layers``); its first token goes to ``first_token_to``."""
        req = self.engine.add_request(
            prompt_token_ids, params, request_id, prefill_only=True, tenant_salt=tenant_salt
        )
        self.engine.stream_layers(request_id, sink)
        self._uncounted[request_id] = req
        self._first_tokens[request_id] = first_token_to

    def reserve(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        tenant_salt: bytes,
    ) -> bool:
        """Hold blocks for incoming KV; False (nothing held) when the pool cannot now."""
        try:
            req = self.engine.reserve_for_kv(
                prompt_token_ids, params, request_id, tenant_salt=tenant_salt
            )
        except KvImportError:
            return False
        self._uncounted[request_id] = req
        return True

    def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._uncounted.pop(request_id, None)
        self._exports.pop(request_id, None)
        self._first_tokens.pop(request_id, None)

    # ---- the thread's loop -----------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        stalled = False
        while True:
            # Sleep on the queue while stepping cannot make progress; else take what is there.
            for command in self._take_commands(block=stalled or not engine.has_unfinished()):
                if command is None:
                    logger.info("engine thread stopping")
                    return
                try:
                    command(engine)
                except Exception:
                    logger.exception("engine command failed")
            stalled = engine.has_unfinished() and not self._step()
            self._publish()

    def _take_commands(self, block: bool) -> list[Command | None]:
        commands: list[Command | None] = []
        if block:
            commands.append(self._commands.get())
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _step(self) -> bool:
        """One engine step; False when it could not progress and only a command can change
        that: every request is parked (waiting for KV, or for its export), or the waiting
        ones cannot be admitted while parked ones hold the blocks."""
        engine = self.engine
        try:
            deltas = engine.step()
        except Exception as exc:
            logger.exception("engine step failed; aborting every request")
            self._abort_all(EngineError(f"engine failed: {exc}"))
            return True
        cached: dict[str, int] = {}
        for delta in deltas:
            admitted = self._uncounted.pop(delta.request_id, None)
            if admitted is not None:
                cached[delta.request_id] = admitted.num_cached_tokens
                self._num_prompt_tokens += admitted.num_prompt_tokens
                self._num_cached_tokens += admitted.num_cached_tokens
            export_to = self._exports.pop(delta.request_id, None)
            if export_to is not None:
                self._export(delta.request_id, export_to)
            first_token_to = self._first_tokens.pop(delta.request_id, None)
            if first_token_to is not None:
                self._export_first_token(delta.request_id, first_token_to)
        self._loop.call_soon_threadsafe(self._deliver, deltas, cached)
        # A running request always computes something; without one, no delta means no progress.
        return bool(deltas) or bool(engine.scheduler.running)

    def _abort_all(self, error: EngineError) -> None:
        """End every request: free its blocks, and end its stream or export with ``error``."""
        for req in list(self.engine.scheduler.requests()):
            self.engine.abort(req.request_id)
        for future in self._exports.values():
            self._loop.call_soon_threadsafe(settle, future, None, error)
        for first_token_to in self._first_tokens.values():
            self._loop.call_soon_threadsafe(settle, first_token_to, None, error)
        self._uncounted.clear()
        self._exports.clear()
        self._first_tokens.clear()
        self._loop.call_soon_threadsafe(self._fail_all, error)

    def _export(self, request_id: str, export_to: asyncio.Future[KvPayload]) -> None:
        try:
            payload = self.engine.export_kv(request_id)
        except Exception as exc:  # handed to the waiting coroutine
            self.engine.abort(request_id)
            self._loop.call_soon_threadsafe(settle, export_to, None, exc)
            return
        self.engine.release(request_id)
        self._loop.call_soon_threadsafe(settle, export_to, payload, None)

    def _export_first_token(self, request_id: str, first_token_to: asyncio.Future[int]) -> None:
        """The layers already went to the sink during the step: free the blocks now."""
        try:
            token = self.engine.export_first_token(request_id)
        except Exception as exc:  # handed to the waiting coroutine
            self.engine.abort(request_id)
            self._loop.call_soon_threadsafe(settle, first_token_to, None, exc)
            return
        self.engine.release(request_id)
        self._loop.call_soon_threadsafe(settle, first_token_to, token, None)

    def _publish(self) -> None:
        engine, sched = self.engine, self.engine.scheduler
        self.stats = EngineStats(
            num_waiting=len(sched.waiting),
            num_running=len(sched.running),
            num_parked=len(sched.parked),
            kv_usage=engine.kv.usage,
            num_prompt_tokens=self._num_prompt_tokens,
            num_cached_tokens=self._num_cached_tokens,
            num_queued_tokens=sum(
                max(r.num_prompt_tokens - r.num_computed_tokens, 0)
                for r in (*sched.waiting, *sched.running)
            ),
        )
        events = engine.kv.drain_events()
        if events:
            with self._events_lock:
                self._events.extend(events)


def settle(future: asyncio.Future[T], value: T | None, error: BaseException | None) -> None:
    """Complete ``future`` on its loop, unless its waiter has given up (cancelled)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)  # type: ignore[arg-type]
