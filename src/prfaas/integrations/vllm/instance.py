"""A vLLM engine behind the worker's engine seam (``worker.engine_api.InstanceEngine``).

vLLM's ``AsyncLLM`` runs in the worker process (its engine core in a child process that
vLLM starts), with the prfaas connector (connector.py) configured by launch.py. The KV
moves through the connector, not through this class: a prefill command runs the prompt with
``max_tokens=1`` and the connector pushes its KV to ``cmd.target``; a decode command with
``expect_kv`` tells the connector to wait for transfer ``request_id`` and load it. The
connector's hand-off log (handoff_log.py) tells this class how each transfer ended.

Request id == transfer id: the gateway uses one id for the prefill and the decode command.
Each vLLM request gets its own id (``<request id>#<n>``), so a fallback can resubmit.
Fallback: ``kv_failed`` (or the decode's KV deadline) aborts the waiting vLLM request and
submits the prompt again without a transfer; the connector abandons the load and holds the
aborted request's blocks until its load thread ends (scheduler_side.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from prfaas.integrations.vllm.cache_report import CacheReport
from prfaas.integrations.vllm.handoff_log import HandoffLog
from prfaas.integrations.vllm.kv_event_feed import KvEventFeed
from prfaas.integrations.vllm.launch import (
    BLOCK_SIZE,
    LOAD_TIMEOUT_S,
    Launch,
    engine_args,
    fingerprint,
    thread_env,
    write_token,
)
from prfaas.integrations.vllm.params import LINK, SEND_TO, TRANSFER_ID
from prfaas.integrations.vllm.profiling import ProfileTarget, profile_vllm
from prfaas.integrations.vllm.sampling import resume_refusal, sampling_params
from prfaas.integrations.vllm.stat_gauge import PoolGauge
from prfaas.integrations.vllm.stream import close, first_output, next_output, token_event
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
from prfaas.worker.engine_api import EngineCheck, EngineFacts, InstanceStats

if TYPE_CHECKING:
    from vllm import RequestOutput, SamplingParams

    from prfaas.worker.config import WorkerConfig

logger = logging.getLogger(__name__)
LOAD_EVENT_WAIT_S = 2.0  # the connector logs a load's end before the request runs on

Phase = Literal["waiting", "parked", "running", "sending"]


@dataclass
class Held:
    """A request this instance holds: what the heartbeat and the leak check count."""

    prompt_len: int
    phase: Phase
    fallback: asyncio.Event = field(default_factory=asyncio.Event)


def for_worker(config: WorkerConfig) -> VllmEngine:
    """A vLLM instance for this worker: the model folder prfaas resolves (a GGUF converted
    once), prfaas's fingerprint of it, a fixed KV port, a private folder for the token file
    and the hand-off log."""
    from prfaas.model.loader import resolve_model_folder

    os.environ.update(thread_env(config))  # read by vLLM's engine processes at their start
    cache_dir = config.engine.resolved_cache_dir
    folder = resolve_model_folder(config.engine.model, cache_dir)
    private = Path(tempfile.mkdtemp(prefix="prfaas-vllm-"))
    launch = Launch(
        model_folder=folder,
        fingerprint=fingerprint(folder, config.engine),
        kv_host=config.kv_host,
        kv_port=config.kv_port or free_port(config.kv_host),
        events_file=private / "handoffs.jsonl",
        token_file=write_token(private, config.cluster_token),
        kv_events_endpoint=f"ipc://{private / 'kv-events'}",
    )
    return VllmEngine(config, launch, private)


class VllmEngine:
    def __init__(self, config: WorkerConfig, launch: Launch, private: Path) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        self.launch, self._private = launch, private
        self.gauge = PoolGauge()
        # Subscribed before the engine starts: every cache event of its life is read.
        self.cache = KvEventFeed(
            launch.kv_events_endpoint, CacheReport(launch.fingerprint, BLOCK_SIZE)
        )
        try:
            self.llm = AsyncLLM.from_engine_args(
                engine_args(config, launch), stat_loggers=[self.gauge.factory]
            )
        except BaseException:
            self.cache.close()
            raise
        vllm_config = self.llm.vllm_config
        model = vllm_config.model_config
        hf = model.hf_config
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        # K and V of every layer, per token (bytes)
        self.kv_bytes_per_token = (
            2 * hf.num_hidden_layers * hf.num_key_value_heads * head_dim * model.dtype.itemsize
        )
        self.num_blocks = vllm_config.cache_config.num_gpu_blocks or 1
        self._facts = EngineFacts(
            fingerprint=launch.fingerprint,
            model_name=str(launch.model_folder),
            block_size=BLOCK_SIZE,
            max_model_len=model.max_model_len,
            vocab_size=model.get_vocab_size(),
            hybrid=False,
            kv_host=launch.kv_host,
            kv_port=launch.kv_port,
        )
        self.handoffs = HandoffLog(launch.events_file)
        self._held: dict[str, Held] = {}
        self._ids = itertools.count()
        self._fallbacks = 0

    @property
    def facts(self) -> EngineFacts:
        return self._facts

    async def start(self) -> None:
        """Nothing to start: the engine runs once constructed."""

    async def stop(self) -> None:
        self.llm.shutdown()
        self.cache.close()
        shutil.rmtree(self._private, ignore_errors=True)

    # -- requests ------------------------------------------------------------------------

    def _vllm_id(self, request_id: str) -> str:
        return f"{request_id}#{next(self._ids)}"

    def _generate(
        self,
        cmd: PrefillCommand | DecodeCommand,
        params: SamplingParams,
        prompt_token_ids: list[int] | None = None,  # default: the command's prompt
    ) -> AsyncIterator[RequestOutput]:
        from vllm.inputs import TokensPrompt

        ids = list(cmd.prompt_token_ids) if prompt_token_ids is None else prompt_token_ids
        prompt = TokensPrompt(prompt_token_ids=ids)
        if cmd.tenant_salt_hex:  # tenants never share vLLM's cache blocks
            prompt["cache_salt"] = cmd.tenant_salt_hex
        return self.llm.generate(prompt, params, self._vllm_id(cmd.request_id))

    async def prefill(self, cmd: PrefillCommand) -> PrefillResult:
        started_s = time.monotonic()
        end_s = started_s + cmd.deadline_s

        def failed(error: str) -> PrefillResult:
            return PrefillResult(
                request_id=cmd.request_id, ok=False, error=error, seconds=_since(started_s)
            )

        try:
            params = sampling_params(cmd.params, prefill_only=True)
        except ValueError as e:
            return failed(str(e))
        t = cmd.target
        link = {"name": t.link, "codec": t.codec, "connections": t.connections, "tls": t.tls}
        link["server_name"] = t.server_name
        handoff = {TRANSFER_ID: cmd.request_id, SEND_TO: f"{t.host}:{t.port}", LINK: link}
        params.extra_args = {"kv_transfer_params": handoff}
        self._held[cmd.request_id] = held = Held(len(cmd.prompt_token_ids), "waiting")
        try:
            last: RequestOutput | None = None
            async with asyncio.timeout(cmd.deadline_s):
                async for out in self._generate(cmd, params):
                    held.phase, last = "running", out
            assert last is not None
            held.phase = "sending"
            sent = await self.handoffs.wait(cmd.request_id, "send", end_s - time.monotonic())
        except TimeoutError:
            return failed(f"prefill not done within its deadline ({cmd.deadline_s}s)")
        except ValueError as e:  # vLLM refused the input
            return failed(str(e))
        finally:
            del self._held[cmd.request_id]
        if sent is None:
            return failed("KV not acknowledged within the deadline")
        if not sent.ok:
            return failed(f"KV transfer failed: {sent.error}")
        return PrefillResult(
            request_id=cmd.request_id,
            ok=True,
            kv_bytes=sent.kv_bytes,  # the sender's count, as the reference engine reports
            wire_bytes=sent.wire_bytes,
            seconds=_since(started_s),
            transfer_s=sent.seconds,
            cached_tokens=last.num_cached_tokens or 0,
        )

    async def decode(self, cmd: DecodeCommand) -> AsyncIterator[TokenEvent]:
        spec, resumed = cmd.params, list(cmd.resume_token_ids)
        refusal = resume_refusal(spec, len(resumed)) if resumed else None
        if refusal is not None:
            raise ValueError(refusal)
        # Failover: the streamed tokens are prompt to vLLM, prefilled here; the stream goes on.
        prompt = [*cmd.prompt_token_ids, *resumed]
        params = sampling_params(spec, num_resumed=len(resumed))  # ValueError before any event
        local = params.clone()
        # vLLM computes prompt logprobs only for prompt tokens it computes itself: such a
        # request holds no room for KV and is prefilled here (reserved=False: none is sent).
        take_kv = cmd.expect_kv and spec.prompt_logprobs is None
        if take_kv:
            params.extra_args = {"kv_transfer_params": {TRANSFER_ID: cmd.request_id}}
        held = Held(len(prompt), "parked" if take_kv else "waiting")
        if cmd.request_id in self._held:
            raise ValueError(f"request {cmd.request_id} is already held here")
        self._held[cmd.request_id] = held
        outputs = self._generate(cmd, params, prompt)
        try:
            if cmd.expect_kv:
                # With take_kv the KV is always taken: the connector's receiver buffers it
                # and lands it once vLLM's scheduler admits the request (it queues, never
                # refuses, for want of blocks); KV that cannot land falls back below.
                yield TokenEvent(request_id=cmd.request_id, reserved=take_kv)
            out = await first_output(outputs, held.fallback, cmd.deadline_s + LOAD_TIMEOUT_S)
            fell_back = out is None
            if out is None:  # the KV will not come: prefill here
                await close(outputs)
                outputs = self._generate(cmd, local, prompt)
                out = await next_output(outputs)
            elif take_kv:
                await self._landed(cmd.request_id)
            held.phase = "running"
            # Prompt tokens not computed here: none when KV was expected and not refused
            # (landed, or recomputed by the connector: counted as computed); else the hit.
            # Prompt tokens computed here (the canary's check): all but the hit when this
            # instance prefilled; none when the connector confirmed the KV landed.
            hit = out.num_cached_tokens or 0
            here = fell_back or not take_kv
            computed = len(prompt) - hit if here else 0
            yield token_event(cmd.request_id, out, spec, hit if here else 0, computed, prompt)
            while not out.finished:
                out = await next_output(outputs)
                yield token_event(cmd.request_id, out, spec, 0)
        finally:
            del self._held[cmd.request_id]
            await close(outputs)

    async def _landed(self, request_id: str) -> bool:
        event = await self.handoffs.wait(request_id, "load", LOAD_EVENT_WAIT_S)
        if event is not None and not event.ok:
            self._fallbacks += 1  # the connector recomputed what did not land
        return event is not None and event.ok

    def kv_failed(self, request_id: str, reason: str) -> bool:
        held = self._held.get(request_id)
        if held is None or held.phase != "parked" or held.fallback.is_set():
            return False
        logger.info("KV of %s will not come (%s): prefilling here", request_id, reason)
        held.fallback.set()
        self._fallbacks += 1
        return True

    def set_fault(self, fault: str, on: bool) -> None:
        raise ValueError(f"the vLLM engine has no fault switch {fault!r} (reference engine only)")

    async def pull(self, cmd: PullCommand) -> PullResult:
        error = "the vLLM engine does not land pulled prefixes yet"
        return PullResult(request_id=cmd.request_id, ok=False, error=error)

    async def profile(self, request: ProfileRequest) -> ProfileResult:
        target = ProfileTarget(
            self.llm, self._facts.vocab_size, self._facts.max_model_len, self.kv_bytes_per_token
        )
        return await profile_vllm(target, request)

    # -- reporting -----------------------------------------------------------------------

    def _count(self, *phases: Phase) -> int:
        return sum(1 for h in self._held.values() if h.phase in phases)

    def stats(self) -> InstanceStats:
        return InstanceStats(
            num_waiting=self._count("waiting"),
            num_running=self._count("running"),
            num_parked=self._count("parked", "sending"),
            kv_usage=min(1.0, self.gauge.kv_usage),
            fallbacks=self._fallbacks,
            queued_tokens=sum(h.prompt_len for h in self._held.values() if h.phase == "waiting"),
        )

    def drain_cache_events(self) -> list[CacheEventMsg]:
        return self.cache.drain()

    async def check(self) -> EngineCheck:
        """What the worker can see of the engine: vLLM's KV pool use (its last step's
        report), its prefix-cached blocks (its KV events: those not leased), the requests
        held here, and the connector's receive buffers (after its last load). The
        receiver's open connections are not visible here (0)."""
        self.handoffs.poll()
        leased = round(self.gauge.kv_usage * self.num_blocks)
        free = self.num_blocks - leased
        cached = min(free, self.cache.num_blocks)
        return EngineCheck(
            integrity_error=None,
            blocks=BlockCounts(total=self.num_blocks, free=free, cached=cached, leased=leased),
            num_waiting=self._count("waiting"),
            num_running=self._count("running"),
            num_parked=self._count("parked"),
            num_streams=len(self._held),
            kv_connections=0,
            kv_landings=0,
            kv_allocated_bytes=self.handoffs.held_bytes,
            kv_awaited=self._count("parked"),
            kv_sending=self._count("sending"),
        )

    async def switch_role(self, role: Role) -> None:
        """Nothing to do: the connector runs as kv_both, either role's commands."""

    async def free_cache(self) -> int:
        """vLLM's own prefix-cache reset (it refuses while requests run); vLLM does not
        say how many blocks it dropped."""
        await self.llm.reset_prefix_cache()
        return 0


def free_port(host: str) -> int:
    """A free TCP port now (the connector's receiver binds it when vLLM starts)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _since(started_s: float) -> float:
    return time.monotonic() - started_s
