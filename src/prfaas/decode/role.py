"""The decode role: hold blocks for an incoming KV payload, land it, decode, stream tokens.

If the KV does not arrive by the deadline, or arrives corrupt, for another model or for
another prompt (its header's prompt hash differs from this side's), the engine prefills
the prompt here instead (the fallback): the request still completes. Once a
request has given up on its KV, the receiver is told to abandon it: whatever landed is
freed and a late (re)send is refused, so nothing is held for a request nobody awaits.

A stream that expects KV starts with an event saying whether blocks are held for it
(``reserved``); without them the prompt is prefilled here at once, and the gateway does not
ship the KV. A stream with ``resume_token_ids`` (decode failover) goes on from those outputs.

The first token event carries ``cached_tokens``: the prompt tokens this instance served
from its own prefix cache when it prefilled the prompt itself (no KV expected, or the
fallback); 0 when the KV landed from elsewhere. It also carries ``computed_tokens``: the
prompt tokens this engine computed itself (0 when the KV landed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prfaas.decode.kv_import import check_prompt, wire_to_payload
from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.handoff import KvImportError, KvPayload, LayerLayout
from prfaas.engine.outputs import TokenDelta
from prfaas.kvcache.hashing import prompt_hash, root_hash
from prfaas.messages import DecodeCommand, TokenEvent
from prfaas.sampling import to_entries, to_prompt_entries, to_sampling_params
from prfaas.transfer.receiver import KvReceiver

logger = logging.getLogger(__name__)
# Receiver waits block a thread each until their KV lands or their deadline passes; a pool of
# their own, so they never queue behind (or starve) other to_thread work such as KV sends.
MAX_KV_WAITERS = 256


class DecodeRole:
    def __init__(
        self, engine: AsyncEngine, receiver: KvReceiver, layout: list[LayerLayout]
    ) -> None:
        self.engine = engine
        self.receiver = receiver
        self.layout = layout
        # KV awaited per request; failing one early starts the local fallback at once.
        self._awaited: dict[str, asyncio.Future[KvPayload]] = {}
        self._waiters = ThreadPoolExecutor(MAX_KV_WAITERS, thread_name_prefix="kv-wait")
        # Test-only faults (``FaultSwitch``, served where PRFAAS_TEST_FAULTS=1): off.
        self.faults: set[str] = set()

    @property
    def num_awaiting_kv(self) -> int:
        """Requests holding blocks for KV that has neither landed nor been given up on."""
        return sum(1 for f in self._awaited.values() if not f.done())

    def close(self) -> None:
        self._waiters.shutdown(wait=False, cancel_futures=True)

    def fail(self, request_id: str, reason: str) -> bool:
        """The KV for ``request_id`` will not come (its prefill failed): fall back now."""
        future = self._awaited.get(request_id)
        if future is None or future.done():
            return False
        future.set_exception(KvImportError(f"prefill side failed: {reason}"))
        return True

    def _given_up(self, request_id: str, kv: asyncio.Future[KvPayload]) -> None:
        """The KV future failed or was cancelled (deadline, prefill failed, client gone)."""
        if kv.cancelled():
            self.receiver.abandon(request_id, "the decode stream ended first")
        elif (error := kv.exception()) is not None:
            self.receiver.abandon(request_id, f"{type(error).__name__}: {error}")

    def _wait_kv(
        self, request_id: str, prompt: list[int], salt: bytes, timeout_s: float
    ) -> KvPayload:
        received = self.receiver.wait(request_id, timeout_s=timeout_s)
        try:
            root = root_hash(self.engine.fingerprint, salt)
            check_prompt(received, prompt_hash(prompt, self.engine.block_size, root))
            payload = wire_to_payload(received, prompt, self.layout)  # copies: owns its data
            if "zero_state" in self.faults:
                for state in payload.states:
                    state.recurrent.zero_()
                    state.conv.zero_()
            return payload
        finally:
            self.receiver.release(request_id)

    async def run(self, cmd: DecodeCommand) -> AsyncIterator[TokenEvent]:
        params = to_sampling_params(cmd.params)
        salt = bytes.fromhex(cmd.tenant_salt_hex)
        deltas: AsyncIterator[TokenDelta | TokenEvent]
        if cmd.expect_kv:
            loop = asyncio.get_running_loop()
            waiter = loop.run_in_executor(
                self._waiters,
                self._wait_kv,
                cmd.request_id,
                cmd.prompt_token_ids,
                salt,
                cmd.deadline_s,
            )
        if cmd.expect_kv and "ignore_kv" not in self.faults:
            kv: asyncio.Future[KvPayload] = loop.create_future()
            self._awaited[cmd.request_id] = kv
            kv.add_done_callback(lambda done: self._given_up(cmd.request_id, done))
            waiter.add_done_callback(lambda done: _settle(kv, done))
            reserved: asyncio.Future[bool] = loop.create_future()
            held = self.engine.decode_with_kv(
                cmd.prompt_token_ids,
                params,
                cmd.request_id,
                kv,
                deadline_s=cmd.deadline_s,
                tenant_salt=salt,
                on_reserved=reserved.set_result,
            )
            deltas = _announced(cmd.request_id, held, reserved)
        else:
            deltas = self.engine.generate(
                cmd.prompt_token_ids,
                params,
                cmd.request_id,
                tenant_salt=salt,
                resumed=cmd.resume_token_ids,
            )
            if cmd.expect_kv:  # the fault: say "reserved", take the KV, then recompute
                waiter.add_done_callback(lambda done: done.cancelled() or done.exception())
                faked: asyncio.Future[bool] = loop.create_future()
                faked.set_result(True)
                deltas = _announced(cmd.request_id, deltas, faked)
        try:
            async for event in self._events(cmd, deltas):
                yield event
        finally:
            kv_left = self._awaited.pop(cmd.request_id, None)
            if kv_left is not None and not kv_left.done():
                kv_left.cancel()  # the stream ended first (client gone): abandon the KV now

    async def _events(
        self, cmd: DecodeCommand, deltas: AsyncIterator[TokenDelta | TokenEvent]
    ) -> AsyncIterator[TokenEvent]:
        first = True
        async for d in deltas:
            if isinstance(d, TokenEvent):  # the reservation's outcome, before any token
                yield d
                continue
            cached = computed = 0
            if first:
                served = self.engine.prompt_tokens(cmd.request_id)
                cached, computed = (served.cached, served.computed) if served else (0, 0)
            first = False
            yield TokenEvent(
                request_id=cmd.request_id,
                token_ids=d.new_token_ids,
                text=d.new_text,
                finished=d.finished,
                finish_reason=d.finish_reason,
                cached_tokens=cached,
                computed_tokens=computed,
                logprobs=to_entries(d.logprobs),
                prompt_logprobs=to_prompt_entries(d.prompt_logprobs),
            )


async def _announced(
    request_id: str, deltas: AsyncIterator[TokenDelta], reserved: asyncio.Future[bool]
) -> AsyncIterator[TokenDelta | TokenEvent]:
    """``TokenEvent(reserved=...)`` as soon as the pool answered, before the KV is awaited
    (the gateway ships the KV only when blocks are held), then the deltas. The deltas' first
    step (reserve, wait for the KV, first token) runs as a task beside that wait; however
    this generator ends, the task has ended before it returns."""
    first: asyncio.Future[TokenDelta] = asyncio.ensure_future(anext(deltas))
    try:
        both: list[asyncio.Future[Any]] = [reserved, first]
        await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
        if reserved.done():  # else the engine refused the request: ``first`` raises it
            yield TokenEvent(request_id=request_id, reserved=reserved.result())
        delta = await first
        yield delta
        while not delta.finished:
            delta = await anext(deltas)
            yield delta
    finally:
        if not first.done():
            first.cancel()
            await asyncio.wait([first])
        if not first.cancelled():
            first.exception()  # retrieved: it was raised above, or the consumer left first
        if isinstance(deltas, AsyncGenerator):
            await deltas.aclose()


def _settle(future: asyncio.Future[KvPayload], done: asyncio.Future[KvPayload]) -> None:
    """Pass the receiver thread's outcome on, unless the KV was already given up on."""
    if future.done():
        if not done.cancelled():
            done.exception()  # retrieved: a late failure is expected, not an error
        return
    if done.cancelled():
        future.cancel()
    elif done.exception() is not None:
        future.set_exception(done.exception())  # type: ignore[arg-type]
    else:
        future.set_result(done.result())
