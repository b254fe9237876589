"""One ``Engine`` behind an asyncio API, for the serving processes (gateway, workers).

The engine is not thread-safe, so it lives on its own thread (``EngineThread``) and every
engine call happens there. The asyncio side sends commands through a thread-safe queue;
results and token deltas come back with ``loop.call_soon_threadsafe``. The thread sleeps on
its queue while the engine has no work and steps while it has some.

Ownership: a request's stream (its ``asyncio.Queue`` of deltas) belongs to the loop; the
``Request`` and its blocks belong to the engine thread. A consumer that stops iterating
(cancelled, client gone) sends an abort, which frees the blocks on the thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from prfaas.engine.engine import Engine, LayerSink
from prfaas.engine.engine_thread import EngineError, EngineStats, EngineThread
from prfaas.engine.handoff import KvPayload, LayerLayout
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.block_pool import CacheEvent

__all__ = ["AsyncEngine", "EngineError", "EngineStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Stream:
    """Loop-side end of one request: its deltas (or a terminal exception) in order."""

    deltas: asyncio.Queue[TokenDelta | BaseException]
    num_cached_tokens: int | None = None


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread: EngineThread | None = None
        self._streams: dict[str, _Stream] = {}
        self._fallbacks = 0

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

    @property
    def layout(self) -> list[LayerLayout]:
        return self._engine.layout

    @property
    def kv_dtype(self) -> torch.dtype:
        return self._engine.dtype

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread; call from the asyncio loop that will use this engine."""
        if self._thread is not None:
            raise RuntimeError("AsyncEngine already started")
        loop = asyncio.get_running_loop()
        self._thread = EngineThread(self._engine, loop, self._deliver, self._fail_all)
        self._thread.start()

    async def shutdown(self) -> None:
        """Abort what runs (its streams end with ``EngineError``), then stop the thread."""
        if self._thread is None or not self._thread.running:
            return
        await asyncio.to_thread(self._thread.stop)

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
        args = (prompt_token_ids, params, request_id, tenant_salt)
        try:
            await self._thread_call(lambda t: t.admit(*args))
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
        self._open(request_id)  # no deltas are delivered to it; it keeps the id unique
        done: asyncio.Future[KvPayload] = asyncio.get_running_loop().create_future()
        args = (prompt_token_ids, params, request_id, tenant_salt)
        try:
            await self._thread_call(lambda t: t.admit(*args, export_to=done))
            payload = await done
        except BaseException as exc:
            self._close(request_id, abort=isinstance(exc, asyncio.CancelledError))
            raise
        self._close(request_id, abort=False)
        return payload

    async def prefill_streamed(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        sink: LayerSink,
        *,
        tenant_salt: bytes = b"",
    ) -> int:
        """Prefill only, handing the KV to ``sink`` layer by layer as the last chunk computes
        it (``Engine.stream_layers``); returns the first sampled token once the blocks are
        free. Cancelling aborts the request (its blocks are freed on the thread)."""
        self._open(request_id)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        args = (prompt_token_ids, params, request_id, tenant_salt, sink, done)
        try:
            await self._thread_call(lambda t: t.admit_streamed(*args))
            first_token = await done
        except BaseException as exc:
            self._close(request_id, abort=isinstance(exc, asyncio.CancelledError))
            raise
        self._close(request_id, abort=False)
        return first_token

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
        args = (prompt_token_ids, params, request_id, tenant_salt)
        try:
            reserved = await self._thread_call(lambda t: t.reserve(*args))
            if not reserved:
                logger.info("request %s: no blocks to reserve, prefilling locally", request_id)
                await self._thread_call(lambda t: t.admit(*args))
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
                self._running_thread().send(lambda e: e.fail_kv(request_id))
        async for delta in self._follow(request_id, stream):
            yield delta

    def stats(self) -> EngineStats:
        s = self._thread.stats if self._thread is not None else EngineStats()
        return EngineStats(
            s.num_waiting,
            s.num_running,
            s.num_parked,
            s.kv_usage,
            s.num_prompt_tokens,
            s.num_cached_tokens,
            self._fallbacks,
            s.num_queued_tokens,
        )

    @property
    def num_streams(self) -> int:
        """Requests whose stream the loop still follows (for leak checks)."""
        return len(self._streams)

    def drain_cache_events(self) -> list[CacheEvent]:
        return self._thread.drain_events() if self._thread is not None else []

    def num_cached_tokens(self, request_id: str) -> int | None:
        """Prompt tokens of a live request served from the prefix cache (known once it has
        produced its first delta; None before, or once its stream has ended)."""
        stream = self._streams.get(request_id)
        return None if stream is None else stream.num_cached_tokens

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the engine thread and return its result (or raise its error).

        For tests and diagnostics (``check_integrity``); requests go through the methods above.
        """
        return await self._running_thread().call(fn)

    # ---- loop side -------------------------------------------------------------------------

    def _running_thread(self) -> EngineThread:
        if self._thread is None or not self._thread.running:
            raise EngineError("AsyncEngine is not running (start() it first)")
        return self._thread

    async def _thread_call(self, fn: Callable[[EngineThread], T]) -> T:
        """Run one of the thread's own commands (``admit``, ``reserve``) on the thread."""
        thread = self._running_thread()
        return await thread.call(lambda _: fn(thread))

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
        thread = self._thread
        if abort and thread is not None and thread.running:
            thread.send(lambda _: thread.abort(request_id))

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
