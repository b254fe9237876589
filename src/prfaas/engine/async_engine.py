"""One ``Engine`` behind an asyncio API, for the serving processes (gateway, workers).

The engine is not thread-safe, so it lives on a thread this object owns, and every engine
call happens there. The asyncio side puts typed commands (``engine/commands.py``) on a
thread-safe queue; answers and token deltas come back with ``loop.call_soon_threadsafe``.
The thread sleeps on its queue while the engine has no work and steps while it has some;
after each round (the queued commands, then at most one step) it publishes stats and cache
events for the loop to read without touching the engine.

Ownership: a request's stream (its ``asyncio.Queue`` of deltas) belongs to the loop; the
``Request`` and its blocks belong to the engine thread. A consumer that stops iterating
(cancelled, client gone) sends ``Abort``, which frees the blocks on the thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import torch

from prfaas.engine.commands import (
    Abort,
    Admit,
    Command,
    EngineError,
    EngineStats,
    FailKv,
    ImportPrefix,
    Inspect,
    LandKv,
    PrefillDone,
    Reserve,
    StreamPrefill,
    settle,
)
from prfaas.engine.engine import Engine, LayerSink
from prfaas.engine.handoff import KvImportError, KvPayload, LayerLayout
from prfaas.engine.host_memory import HeapTrim
from prfaas.engine.outputs import TokenDelta
from prfaas.engine.sampling_params import SamplingParams
from prfaas.engine.streams import PromptLedger, PromptTokens, Streams
from prfaas.kvcache.block_pool import CacheEvent

__all__ = ["AsyncEngine", "EngineError", "EngineStats", "PrefillDone"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Reply = asyncio.Future[Any]
_Sent = tuple[Command, Reply | None] | None  # None: stop the thread
_LATER = object()  # the command answers later (a streamed prefill, at its first token)


class AsyncEngine:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._commands: queue.SimpleQueue[_Sent] = queue.SimpleQueue()
        self._stopping = False
        self._streams = Streams()
        self._fallbacks = 0
        self._stats = EngineStats()  # published by the thread
        self._events: list[CacheEvent] = []
        self._events_lock = threading.Lock()
        # Thread only: how each prompt was served, streamed prefills awaiting their first token.
        self._served = PromptLedger()
        self._prefills: dict[str, Reply] = {}
        self._heap = HeapTrim(engine.device)  # a long-running worker's RSS stays bounded

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
    def block_size(self) -> int:
        return self._engine.kv.block_size

    @property
    def layout(self) -> list[LayerLayout]:
        return self._engine.layout

    @property
    def kv_dtype(self) -> torch.dtype:
        return self._engine.dtype

    def start(self) -> None:
        """Start the engine thread; call from the asyncio loop that will use this engine."""
        if self._thread is not None:
            raise RuntimeError("AsyncEngine already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="prfaas-engine", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        """Abort what runs (its streams end with ``EngineError``), then stop the thread."""
        if self._thread is None or not self.running:
            return
        self._stopping = True
        self._commands.put(None)
        await asyncio.to_thread(self._thread.join)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # ---- requests --------------------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        *,
        tenant_salt: bytes = b"",
        resumed: list[int] | tuple[()] = (),  # decode failover: ``engine/resume.py``
    ) -> AsyncIterator[TokenDelta]:
        """Stream one request's deltas. Input errors raise ValueError before any delta."""
        stream = self._streams.open(request_id)
        try:
            await self._ask(Admit(prompt_token_ids, params, request_id, tenant_salt, resumed))
        except BaseException as exc:
            self._close(request_id, isinstance(exc, asyncio.CancelledError))
            raise
        async for delta in self._streams.follow(request_id, stream, self._close):
            yield delta

    async def prefill_streamed(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        sink: LayerSink,
        *,
        tenant_salt: bytes = b"",
    ) -> PrefillDone:
        """Prefill only, handing the KV to ``sink`` layer by layer as the last chunk computes
        it (``Engine.stream_layers``); returns once the blocks are free. Cancelling aborts the
        request (its blocks are freed on the thread)."""
        self._streams.open(request_id)  # no deltas are delivered to it; it keeps the id unique
        command = StreamPrefill(prompt_token_ids, params, request_id, sink, tenant_salt)
        try:
            done: PrefillDone = await self._ask(command)
        except BaseException as exc:
            self._close(request_id, isinstance(exc, asyncio.CancelledError))
            raise
        self._close(request_id, False)
        return done

    async def decode_with_kv(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        kv: Awaitable[KvPayload],
        *,
        deadline_s: float,
        tenant_salt: bytes = b"",
        on_reserved: Callable[[bool], object] = lambda held: None,
    ) -> AsyncIterator[TokenDelta]:
        """Hold blocks now (``on_reserved(held)``), land the KV when ``kv`` resolves, then
        stream deltas. If ``kv`` raises, misses ``deadline_s`` or does not fit, or no blocks are
        free now, the request is prefilled here instead (a fallback: ``stats().fallbacks``)."""
        stream = self._streams.open(request_id)
        try:
            reserved = await self._ask(Reserve(prompt_token_ids, params, request_id, tenant_salt))
            on_reserved(reserved)
            if not reserved:
                logger.info("request %s: no blocks to reserve, prefilling locally", request_id)
                self._fallbacks += 1
                await self._ask(Admit(prompt_token_ids, params, request_id, tenant_salt))
        except BaseException as exc:
            self._close(request_id, isinstance(exc, asyncio.CancelledError))
            raise
        if reserved:
            try:
                payload = await asyncio.wait_for(kv, deadline_s)
                await self._ask(LandKv(request_id, payload))
            except asyncio.CancelledError:
                self._close(request_id, True)
                raise
            except Exception as exc:  # any failure of the hand-off falls back
                logger.warning(
                    "request %s: KV hand-off failed (%r); prefilling locally", request_id, exc
                )
                self._fallbacks += 1
                self._post(FailKv(request_id))
        async for delta in self._streams.follow(request_id, stream, self._close):
            yield delta

    async def import_prefix(self, payload: KvPayload, *, tenant_salt: bytes = b"") -> int:
        """Land ``payload`` as prefix cache only (``Engine.import_prefix``)."""
        return int(await self._ask(ImportPrefix(payload, tenant_salt)))

    def stats(self) -> EngineStats:
        return dataclasses.replace(self._stats, fallbacks=self._fallbacks)

    @property
    def num_streams(self) -> int:
        """Requests whose stream the loop still follows (for leak checks)."""
        return len(self._streams)

    def drain_cache_events(self) -> list[CacheEvent]:
        with self._events_lock:
            events, self._events = self._events, []
        return events

    def prompt_tokens(self, request_id: str) -> PromptTokens | None:
        """How a live request's prompt was served (prefix hit, tokens computed here; (0, 0)
        when its KV landed); None before its first delta or after its stream ended."""
        return self._streams.prompt_tokens(request_id)

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """Run ``fn(engine)`` on the engine thread (``Inspect``): tests and diagnostics."""
        return cast(T, await self._ask(Inspect(fn)))

    # ---- loop side -------------------------------------------------------------------------

    def _ask(self, command: Command) -> Reply:
        """Queue a command whose answer (or error) comes on the returned future."""
        if not self.running or self._loop is None:
            raise EngineError("AsyncEngine is not running (start() it first)")
        reply: Reply = self._loop.create_future()
        self._commands.put((command, reply))
        return reply

    def _post(self, command: Command) -> None:
        """Queue a command nobody awaits (its failure is logged on the thread)."""
        if not self.running:
            raise EngineError("AsyncEngine is not running (start() it first)")
        self._commands.put((command, None))

    def _close(self, request_id: str, abort: bool) -> None:
        """Forget a stream; with ``abort``, end its request on the thread and free its blocks."""
        self._streams.forget(request_id)
        if abort and self.running:
            self._post(Abort(request_id))

    # ---- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        engine = self._engine
        stalled = False
        while True:
            # Sleep on the queue while stepping cannot make progress; else take what is there.
            for sent in self._take_commands(block=stalled or not engine.has_unfinished()):
                if sent is None:
                    logger.info("engine thread stopping")
                    self._abort_all(EngineError("engine shut down"))
                    return
                self._execute(*sent)
            stalled = engine.has_unfinished() and not self._step()
            self._publish()
            self._heap.tick()

    def _take_commands(self, block: bool) -> list[_Sent]:
        commands = [self._commands.get()] if block else []
        while not self._commands.empty():  # this thread is the only consumer
            commands.append(self._commands.get_nowait())
        return commands

    def _execute(self, command: Command, reply: Reply | None) -> None:
        try:
            value = self._apply(command, reply)
        except Exception as exc:
            if reply is None:
                logger.exception("engine command %s failed", type(command).__name__)
            else:
                self._answer(reply, None, exc)
            return
        if reply is not None and value is not _LATER:
            self._answer(reply, value, None)

    def _apply(self, command: Command, reply: Reply | None) -> Any:
        """Run one command on the engine; its answer, or ``_LATER``."""
        engine = self._engine
        match command:
            case Admit(prompt, params, rid, salt, resumed):
                req = engine.add_request(prompt, params, rid, tenant_salt=salt, resumed=resumed)
                self._served.admitted(req)
            case StreamPrefill(prompt, params, request_id, sink, salt):
                assert reply is not None
                req = engine.add_request(
                    prompt, params, request_id, prefill_only=True, tenant_salt=salt
                )
                engine.stream_layers(request_id, sink)
                self._served.admitted(req)
                self._prefills[request_id] = reply
                return _LATER
            case Reserve(prompt, params, request_id, salt):
                try:
                    req = engine.reserve_for_kv(prompt, params, request_id, tenant_salt=salt)
                except KvImportError:
                    return False
                self._served.admitted(req)
                return True
            case LandKv(request_id, payload):
                engine.land_kv(request_id, payload)
                self._served.landed(request_id)
            case FailKv(request_id):
                engine.fail_kv(request_id)
            case Abort(request_id):
                engine.abort(request_id)
                self._served.forget(request_id)
                self._prefills.pop(request_id, None)
            case ImportPrefix(payload, salt):
                return engine.import_prefix(payload, tenant_salt=salt)
            case Inspect(fn):
                return fn(engine)
        return None

    def _step(self) -> bool:
        """One engine step; False when it could not progress and only a command can change
        that: every request is parked (waiting for KV, or for its export), or the waiting
        ones cannot be admitted while parked ones hold the blocks."""
        engine = self._engine
        try:
            deltas = engine.step()
        except Exception as exc:
            logger.exception("engine step failed; aborting every request")
            self._abort_all(EngineError(f"engine failed: {exc}"))
            return True
        prompts = self._served.first_deltas(deltas)
        for delta in deltas:
            reply = self._prefills.pop(delta.request_id, None)
            if reply is not None:
                served = prompts.get(delta.request_id)
                self._finish_prefill(delta, reply, served.cached if served else 0)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._streams.deliver, deltas, prompts)
        # A running request always computes something; without one, no delta means no progress.
        return bool(deltas) or bool(engine.scheduler.running)

    def _finish_prefill(self, delta: TokenDelta, reply: Reply, num_cached_tokens: int) -> None:
        """The layers already went to the sink during the step: free the blocks now."""
        try:
            token = self._engine.export_first_token(delta.request_id)
        except Exception as exc:  # handed to the waiting coroutine
            self._engine.abort(delta.request_id)
            self._answer(reply, None, exc)
            return
        self._engine.release(delta.request_id)
        self._publish()  # its cache events are out before the prefill is reported done
        self._answer(reply, PrefillDone.of(token, num_cached_tokens, delta), None)

    def _abort_all(self, error: EngineError) -> None:
        """End every request: free its blocks, and end its stream or prefill with ``error``."""
        for req in list(self._engine.scheduler.requests()):
            self._engine.abort(req.request_id)
        for reply in self._prefills.values():
            self._answer(reply, None, error)
        self._served = PromptLedger()
        self._prefills.clear()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._streams.fail_all, error)

    def _answer(self, reply: Reply, value: Any, error: BaseException | None) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(settle, reply, value, error)

    def _publish(self) -> None:
        engine, sched = self._engine, self._engine.scheduler
        self._stats = EngineStats(
            num_waiting=len(sched.waiting),
            num_running=len(sched.running),
            num_parked=len(sched.parked),
            kv_usage=engine.kv.usage,
            num_prompt_tokens=self._served.num_prompt_tokens,
            num_cached_tokens=self._served.num_cached_tokens,
            num_queued_tokens=sum(
                max(r.num_prompt_tokens - r.num_computed_tokens, 0)
                for r in (*sched.waiting, *sched.running)
            ),
        )
        events = engine.kv.drain_events()
        if events:
            with self._events_lock:
                self._events.extend(events)
