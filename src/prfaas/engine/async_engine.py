"""One ``Engine`` behind an asyncio API, for the serving processes (gateway, workers).

The engine is not thread-safe, so it lives on one dedicated thread and every engine call
happens there. The asyncio side sends commands (plain functions of the engine) through a
thread-safe queue; results and token deltas come back with ``loop.call_soon_threadsafe``.
The thread blocks on the queue while the engine has no work and steps while it has some.

Ownership: a request's stream (its ``asyncio.Queue`` of deltas) belongs to the loop; the
``Request`` object and its blocks belong to the engine thread. A consumer that stops
iterating (cancelled, client gone) sends an abort, which frees the blocks on the thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvImportError, KvPayload
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.request import Request
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.block_pool import CacheEvent

logger = logging.getLogger(__name__)

T = TypeVar("T")
Command = Callable[[Engine], None]


@dataclass(frozen=True)
class EngineStats:
    """A snapshot taken on the engine thread after its latest step or command.

    ``num_prompt_tokens`` and ``num_cached_tokens`` count every request admitted so far
    (their ratio is the prefix hit rate); ``fallbacks`` counts KV hand-offs that failed and
    were prefilled locally instead.
    """

    num_waiting: int = 0
    num_running: int = 0
    num_parked: int = 0
    kv_usage: float = 0.0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    fallbacks: int = 0


class EngineError(RuntimeError):
    """The engine failed while stepping; the request on this stream was aborted."""


@dataclass
class _Stream:
    """Loop-side end of one request: its deltas (or a terminal exception) in order."""

    deltas: asyncio.Queue[TokenDelta | BaseException]
    num_cached_tokens: int | None = None


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = EngineStats()
        self._fallbacks = 0
        self._events: list[CacheEvent] = []
        self._events_lock = threading.Lock()
        # Engine-thread state: requests admitted but not yet counted in the stats, and
        # prefill-only requests whose KV is exported as soon as their first token exists.
        self._uncounted: dict[str, Request] = {}
        self._exports: dict[str, asyncio.Future[KvPayload]] = {}
        self._num_prompt_tokens = 0
        self._num_cached_tokens = 0

    # ---- properties (immutable after load, safe from any thread) ---------------------------

    @property
    def tokenizer(self) -> Any:
        return self._engine.tokenizer

    @property
    def fingerprint(self) -> str:
        return self._engine.fingerprint

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread; call from the asyncio loop that will use this engine."""
        if self._thread is not None:
            raise RuntimeError("AsyncEngine already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="prfaas-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        """Stop the thread; requests still running end with an ``EngineError``."""
        if self._thread is None:
            return
        self._commands.put(None)
        await asyncio.to_thread(self._thread.join)
        self._thread = None
        for stream in self._streams.values():
            stream.deltas.put_nowait(EngineError("engine shut down"))
        self._streams.clear()

    # ---- requests --------------------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        *,
        tenant_salt: bytes = b"",
    ) -> AsyncIterator[TokenDelta]:
        """Stream one request's deltas. Input errors raise ValueError before any delta."""
        stream = self._open(request_id)
        try:
            await self.call(
                lambda e: self._admit(e, prompt_token_ids, params, request_id, tenant_salt)
            )
        except BaseException as exc:
            self._close(request_id, abort=isinstance(exc, asyncio.CancelledError))
            raise
        async for delta in self._follow(request_id, stream):
            yield delta

    async def prefill(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        *,
        tenant_salt: bytes = b"",
    ) -> KvPayload:
        """Prefill only, export the prompt's KV (with the first sampled token), free the blocks."""
        assert self._loop is not None, "AsyncEngine not started"
        self._open(request_id)  # no deltas are delivered to it; it keeps the id unique
        done: asyncio.Future[KvPayload] = self._loop.create_future()

        def admit(e: Engine) -> None:
            self._admit(e, prompt_token_ids, params, request_id, tenant_salt, prefill_only=True)
            self._exports[request_id] = done

        try:
            await self.call(admit)
            payload = await done
        except BaseException as exc:
            self._close(request_id, abort=isinstance(exc, asyncio.CancelledError))
            raise
        self._close(request_id, abort=False)
        return payload

    async def decode_with_kv(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        kv: Awaitable[KvPayload],
        *,
        deadline_s: float,
        tenant_salt: bytes = b"",
    ) -> AsyncIterator[TokenDelta]:
        """Hold blocks now, land the KV when ``kv`` resolves, then stream deltas.

        If ``kv`` raises, misses ``deadline_s`` or does not fit, the request is prefilled
        here instead (the fallback, counted in ``stats().fallbacks``). If the pool cannot
        hold the blocks now, the request is simply generated here.
        """
        stream = self._open(request_id)
        try:
            reserved = await self.call(
                lambda e: self._reserve(e, prompt_token_ids, params, request_id, tenant_salt)
            )
            if not reserved:
                logger.info("request %s: no blocks to reserve, prefilling locally", request_id)
                await self.call(
                    lambda e: self._admit(e, prompt_token_ids, params, request_id, tenant_salt)
                )
        except BaseException as exc:
            self._close(request_id, abort=isinstance(exc, asyncio.CancelledError))
            raise
        if reserved:
            try:
                payload = await asyncio.wait_for(kv, deadline_s)
                await self.call(lambda e: e.land_kv(request_id, payload))
            except asyncio.CancelledError:
                self._close(request_id, abort=True)
                raise
            except Exception as exc:  # any failure of the hand-off falls back
                logger.warning(
                    "request %s: KV hand-off failed (%r); prefilling locally", request_id, exc
                )
                self._fallbacks += 1
                self._send(lambda e: e.fail_kv(request_id))
        async for delta in self._follow(request_id, stream):
            yield delta

    def stats(self) -> EngineStats:
        s = self._stats
        return EngineStats(
            s.num_waiting,
            s.num_running,
            s.num_parked,
            s.kv_usage,
            s.num_prompt_tokens,
            s.num_cached_tokens,
            self._fallbacks,
        )

    def drain_cache_events(self) -> list[CacheEvent]:
        with self._events_lock:
            events, self._events = self._events, []
        return events

    def num_cached_tokens(self, request_id: str) -> int | None:
        """Prompt tokens of a live request served from the prefix cache (known once it has
        produced its first delta; None before, or once its stream has ended)."""
        stream = self._streams.get(request_id)
        return None if stream is None else stream.num_cached_tokens

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the engine thread and return its result (or raise its error).

        For tests and diagnostics (``check_integrity``); requests go through the methods above.
        """
        assert self._loop is not None, "AsyncEngine not started"
        loop = self._loop
        future: asyncio.Future[T] = loop.create_future()

        def command(engine: Engine) -> None:
            try:
                value = fn(engine)
            except Exception as exc:  # handed back to the caller
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, value, None)

        self._send(command)
        return await future

    # ---- loop side -------------------------------------------------------------------------

    def _open(self, request_id: str) -> _Stream:
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        stream = _Stream(asyncio.Queue())
        self._streams[request_id] = stream
        return stream

    async def _follow(self, request_id: str, stream: _Stream) -> AsyncIterator[TokenDelta]:
        finished = False
        try:
            while not finished:
                item = await stream.deltas.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
        finally:
            self._close(request_id, abort=not finished)

    def _close(self, request_id: str, *, abort: bool) -> None:
        """Forget a stream; with ``abort``, end its request on the thread and free its blocks."""
        self._streams.pop(request_id, None)
        if abort and self._thread is not None:
            self._send(lambda e: self._abort_on_thread(e, request_id))

    def _send(self, command: Command) -> None:
        if self._thread is None:
            raise RuntimeError("AsyncEngine is not running")
        self._commands.put(command)

    def _deliver(self, deltas: list[TokenDelta], cached: dict[str, int]) -> None:
        for request_id, num in cached.items():
            stream = self._streams.get(request_id)
            if stream is not None:
                stream.num_cached_tokens = num
        for delta in deltas:
            stream = self._streams.get(delta.request_id)
            if stream is not None:
                stream.deltas.put_nowait(delta)

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.deltas.put_nowait(error)

    # ---- engine thread ---------------------------------------------------------------------

    def _admit(
        self,
        engine: Engine,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        tenant_salt: bytes,
        *,
        prefill_only: bool = False,
    ) -> None:
        req = engine.add_request(
            prompt_token_ids,
            params,
            request_id,
            prefill_only=prefill_only,
            tenant_salt=tenant_salt,
        )
        self._uncounted[request_id] = req

    def _reserve(
        self,
        engine: Engine,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        tenant_salt: bytes,
    ) -> bool:
        try:
            req = engine.reserve_for_kv(
                prompt_token_ids, params, request_id, tenant_salt=tenant_salt
            )
        except KvImportError:
            return False
        self._uncounted[request_id] = req
        return True

    def _abort_on_thread(self, engine: Engine, request_id: str) -> None:
        engine.abort(request_id)
        self._uncounted.pop(request_id, None)
        self._exports.pop(request_id, None)

    def _run(self) -> None:
        engine = self._engine
        while True:
            # Sleep on the queue while there is nothing to step; otherwise take what is there.
            for command in self._take_commands(block=not engine.has_unfinished()):
                if command is None:
                    logger.info("engine thread stopping")
                    return
                try:
                    command(engine)
                except Exception:
                    logger.exception("engine command failed")
            if engine.has_unfinished():
                self._step(engine)
            self._publish(engine)

    def _take_commands(self, block: bool) -> list[Command | None]:
        commands: list[Command | None] = []
        if block:
            commands.append(self._commands.get())
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _step(self, engine: Engine) -> None:
        assert self._loop is not None
        try:
            deltas = engine.step()
        except Exception as exc:
            logger.exception("engine step failed; aborting every request")
            for req in list(engine.scheduler.requests()):
                engine.abort(req.request_id)
            self._uncounted.clear()
            self._exports.clear()
            self._loop.call_soon_threadsafe(self._fail_all, EngineError(f"engine failed: {exc}"))
            return
        cached: dict[str, int] = {}
        for delta in deltas:
            admitted = self._uncounted.pop(delta.request_id, None)
            if admitted is not None:
                cached[delta.request_id] = admitted.num_cached_tokens
                self._num_prompt_tokens += admitted.num_prompt_tokens
                self._num_cached_tokens += admitted.num_cached_tokens
            done = self._exports.pop(delta.request_id, None)
            if done is not None:
                self._export(engine, delta.request_id, done)
        self._loop.call_soon_threadsafe(self._deliver, deltas, cached)

    def _export(self, engine: Engine, request_id: str, done: asyncio.Future[KvPayload]) -> None:
        assert self._loop is not None
        try:
            payload = engine.export_kv(request_id)
        except Exception as exc:  # handed to the waiting coroutine
            engine.abort(request_id)
            self._loop.call_soon_threadsafe(_settle, done, None, exc)
            return
        engine.release(request_id)
        self._loop.call_soon_threadsafe(_settle, done, payload, None)

    def _publish(self, engine: Engine) -> None:
        sched = engine.scheduler
        self._stats = EngineStats(
            num_waiting=len(sched.waiting),
            num_running=len(sched.running),
            num_parked=len(sched.parked),
            kv_usage=engine.kv.usage,
            num_prompt_tokens=self._num_prompt_tokens,
            num_cached_tokens=self._num_cached_tokens,
        )
        events = engine.kv.drain_events()
        if events:
            with self._events_lock:
                self._events.extend(events)


def _settle(future: asyncio.Future[T], value: T | None, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)  # type: ignore[arg-type]
