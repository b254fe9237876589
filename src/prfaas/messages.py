"""Typed messages between the gateway and the workers (the control plane, JSON over HTTP).

KV itself never travels here: it goes over ``prfaas.transfer``'s framed wire format. Every
message is a pydantic model with bounded fields, validated on receipt; nothing is pickled.
``encode``/``decode`` are the only way in and out, and each has a round-trip test.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

TOKEN_HEADER = "x-prfaas-cluster-token"  # the shared cluster token on every control call
# The wire layer after a KV payload's tensors that carries the first sampled token (int64).
KV_FIRST_TOKEN_LAYER = "first_token"
# Optional wire layers after it, when the request asked for logprobs: per position
# ``.logprobs`` (rows, 1 + k) float32 [chosen, top k] and ``.ids`` (rows, 2 + k) int64
# [token id, rank, top k ids], rank 0 marking a position without an entry.
KV_FIRST_LOGPROBS_LAYER = "first_token_logprobs"
KV_PROMPT_LOGPROBS_LAYER = "prompt_logprobs"
MAX_LOGPROBS = 20  # alternatives per position a request may ask for (vLLM's default cap)
MAX_PROMPT_TOKENS = 1 << 20
MAX_NAME = 128
MAX_EVENTS = 65536
HEX_HASH = Annotated[str, Field(min_length=32, max_length=32, pattern=r"^[0-9a-f]+$")]
Role = Literal["prefill", "decode"]

M = TypeVar("M", bound="Message")


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls: type[M], data: bytes | str) -> M:
        return cls.model_validate_json(data)


class SamplingSpec(Message):
    """Sampling parameters as the gateway takes them and workers receive them (validated
    again by the engine's SamplingParams on the worker, which accepts whatever this does)."""

    max_tokens: int = Field(16, ge=1, le=1 << 20)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=16
    )
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list, max_length=64)
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    min_tokens: int = Field(0, ge=0, le=1 << 20)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    # token id -> bias; ids are checked against the vocabulary by the engine.
    logit_bias: dict[
        Annotated[int, Field(ge=0, lt=1 << 24)], Annotated[float, Field(ge=-100.0, le=100.0)]
    ] = Field(default_factory=dict, max_length=300)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    include_stop_str_in_output: bool = False
    # Structured outputs: a JSON schema as JSON text, or any JSON object (at most one).
    json_schema: str | None = Field(None, max_length=65536)
    json_object: bool = False


class WorkerInfo(Message):
    """A worker announces itself to the gateway (authenticated by the cluster token)."""

    name: str = Field(max_length=MAX_NAME)
    cluster: str = Field(max_length=MAX_NAME)
    role: Role
    http_url: str = Field(max_length=512)
    kv_host: str = Field(max_length=256)
    kv_port: int = Field(ge=0, le=65535)  # the KV receiver (decode role); 0 when none
    fingerprint: str = Field(max_length=64)
    model_name: str = Field(max_length=512)
    max_model_len: int = Field(ge=1)
    block_size: int = Field(ge=1)
    epoch: int = Field(ge=0)  # changes on every worker start: stale index entries vanish
    # Linear-attention layers: a prefix hit also needs a state snapshot at its end, so the
    # kv index counts only blocks up to the instance's snapshots (docs/hybrid.md).
    hybrid: bool = False


class CacheEventMsg(Message):
    block_hash: HEX_HASH
    stored: bool
    # About the state snapshot keyed by the hash (hybrid models), not the block. Left out of
    # the JSON when false, so dense workers' heartbeats are no larger than before.
    snapshot: bool = False

    @model_serializer(mode="wrap")
    def _omit_false_snapshot(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not self.snapshot:
            data.pop("snapshot", None)
        return data


class LinkReport(Message):
    """One link's egress as its sender measures it (``transfer/monitor.py``), reported by the
    sending worker in every heartbeat: the one measurement of link goodput."""

    link: str = Field(max_length=MAX_NAME)
    bytes_sent: int = Field(ge=0)  # monotone wire bytes, transfers still in flight included
    rate_gbps: float = Field(ge=0.0)  # bytes on the wire per second over the last window
    goodput_gbps: float = Field(ge=0.0)  # the last transfer that kept the link backlogged
    backlog_bytes: int = Field(ge=0)  # queued for the link, not yet on the wire
    transfers_open: int = Field(ge=0)
    cap_gbps: float | None = Field(None, gt=0.0)  # the pacer's cap; None: uncapped
    # Goodput while backlogged over the last seconds, at most the cap (transfer/capacity.py);
    # None: no backlog lately, the capacity is unknown. A stalled link measures 0.
    capacity_gbps: float | None = Field(None, ge=0.0)
    busy_fraction: float = Field(0.0, ge=0.0, le=1.0)  # share of that window with a backlog


class Heartbeat(Message):
    name: str = Field(max_length=MAX_NAME)
    epoch: int = Field(ge=0)
    role: Role
    num_waiting: int = Field(ge=0)
    num_running: int = Field(ge=0)
    kv_usage: float = Field(ge=0.0, le=1.0)
    fallbacks: int = Field(ge=0)
    draining: bool = False  # switching role: route nothing new here
    queued_tokens: int = Field(0, ge=0, le=1 << 40)  # prompt tokens not yet prefilled
    events: list[CacheEventMsg] = Field(default_factory=list, max_length=MAX_EVENTS)
    # The number of the batch in ``events`` within this epoch (1, 2, …), so that a batch
    # sent to several gateways sharing one kv index, or sent again, applies once and in
    # order; 0 when the heartbeat carries no events.
    seq: int = Field(0, ge=0)
    links: list[LinkReport] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _events_are_numbered(self) -> Heartbeat:
        if self.events and self.seq < 1:
            raise ValueError("a heartbeat with events needs seq >= 1")
        return self


class KvTarget(Message):
    """Where and how a prefill worker ships KV: the decode worker's receiver via a link."""

    host: str = Field(max_length=256)
    port: int = Field(ge=1, le=65535)
    link: str = Field("local", max_length=MAX_NAME)
    codec: str = Field("raw", max_length=64)
    connections: int = Field(1, ge=1, le=16)
    tls: bool = False
    server_name: str = Field("", max_length=MAX_NAME)  # the receiver's cluster (TLS identity)


class PrefillCommand(Message):
    request_id: str = Field(max_length=MAX_NAME)
    prompt_token_ids: list[int] = Field(max_length=MAX_PROMPT_TOKENS)
    params: SamplingSpec
    tenant_salt_hex: str = Field(max_length=128)
    target: KvTarget
    deadline_s: float = Field(gt=0.0, le=3600.0)


class PrefillResult(Message):
    request_id: str
    ok: bool
    kv_bytes: int = 0
    wire_bytes: int = 0
    seconds: float = 0.0  # command received to KV acknowledged
    transfer_s: float = 0.0  # transfer opened to acknowledged
    cached_tokens: int = Field(0, ge=0)  # the prefill engine's real prefix hit for the prompt
    error: str | None = None


class DecodeCommand(Message):
    request_id: str = Field(max_length=MAX_NAME)
    prompt_token_ids: list[int] = Field(max_length=MAX_PROMPT_TOKENS)
    params: SamplingSpec
    tenant_salt_hex: str = Field(max_length=128)
    expect_kv: bool  # False: prefill here too (a PD-P worker that also decodes, or fallback)
    deadline_s: float = Field(gt=0.0, le=3600.0)
    # Decode failover: output tokens another instance already streamed to the client. They
    # are prefilled here with the prompt and count as this request's output (penalties,
    # min/max_tokens, stop strings, seeded positions, grammar, detokenizer), and the stream
    # goes on from the next token.
    resume_token_ids: list[int] = Field(default_factory=list, max_length=MAX_PROMPT_TOKENS)

    @model_validator(mode="after")
    def _resume_prefills_here(self) -> DecodeCommand:
        if self.resume_token_ids and self.expect_kv:
            raise ValueError("a resumed decode prefills here: expect_kv must be false")
        return self


class LogprobEntry(Message):
    """One position's logprobs (``engine.logprobs.TokenLogprobs``): the chosen token's
    logprob and rank (1 = the most likely), and the top alternatives, most likely first."""

    token_id: int = Field(ge=0)
    logprob: float
    rank: int = Field(ge=1)
    top_token_ids: list[int] = Field(default_factory=list, max_length=20)
    top_logprobs: list[float] = Field(default_factory=list, max_length=20)


class TokenEvent(Message):
    """One line of a decode worker's NDJSON token stream."""

    request_id: str
    token_ids: list[int] = Field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    # On the first event: prompt tokens this worker took from its own prefix cache when it
    # prefilled the prompt itself (no KV expected, or the fallback); 0 when the KV landed.
    cached_tokens: int = Field(0, ge=0)
    # On the first event: prompt tokens this worker's engine computed itself; 0 when the KV
    # landed (the canary's check that the decode side really used the KV it was sent).
    computed_tokens: int = Field(0, ge=0)
    error: str | None = None
    # One entry per token in ``token_ids`` when the request asked for logprobs.
    logprobs: list[LogprobEntry] | None = Field(None, max_length=MAX_PROMPT_TOKENS)
    # On the first event when it asked for prompt logprobs: one per prompt token (the first
    # is None: nothing precedes it).
    prompt_logprobs: list[LogprobEntry | None] | None = Field(None, max_length=MAX_PROMPT_TOKENS)

    # On the first line of a stream that expects KV, before any token: whether the worker
    # holds blocks for it (True: send the KV) or prefills it here (False: send nothing).
    reserved: bool | None = None


class FaultSwitch(Message):
    """A test-only fault on a decode worker (served only where ``PRFAAS_TEST_FAULTS=1``):
    ``ignore_kv`` takes the shipped KV and recomputes the prompt anyway (fake
    disaggregation); ``zero_state`` zeroes the imported linear-attention state (a hybrid
    model then decodes fluent but different text). What the canary must catch."""

    fault: Literal["ignore_kv", "zero_state"]
    on: bool


class KvFailed(Message):
    """The gateway tells a decode worker that the KV it waits for will not come."""

    request_id: str = Field(max_length=MAX_NAME)
    reason: str = Field("", max_length=1024)


class RoleSwitch(Message):
    role: Role
    name: str = Field("", max_length=MAX_NAME)  # the worker, when sent to the gateway


class PullCommand(Message):
    """Cross-cluster cache pull, at the receiving worker: expect the KV of a cached prefix
    (sent by the instance holding it) and keep it as prefix cache."""

    request_id: str = Field(max_length=MAX_NAME)
    prompt_token_ids: list[int] = Field(max_length=MAX_PROMPT_TOKENS)  # the prefix
    tenant_salt_hex: str = Field(max_length=128)
    deadline_s: float = Field(gt=0.0, le=3600.0)


class PullResult(Message):
    request_id: str
    ok: bool
    cached_tokens: int = 0  # tokens of the prefix now cached at the receiving worker
    error: str | None = None


MAX_PROFILE_LENGTHS = 16


class ProfileRequest(Message):
    """Short measured runs on a worker's engine (start-up profiling): one prefill per length
    and repeat, on fresh random tokens (no prefix-cache hit); with ``decode_batch`` > 0, also
    ``decode_batch`` requests decoding ``decode_tokens`` tokens together."""

    num_tokens: list[Annotated[int, Field(ge=1, le=MAX_PROMPT_TOKENS)]] = Field(
        min_length=1, max_length=MAX_PROFILE_LENGTHS
    )
    repeats: int = Field(2, ge=1, le=4)
    decode_batch: int = Field(0, ge=0, le=64)
    decode_tokens: int = Field(16, ge=2, le=256)


class ProfileResult(Message):
    """``prefill_s[i]``: the fastest of the repeats at ``num_tokens[i]`` (seconds, KV export
    included); ``kv_bytes[i]``: that prompt's KV size by the engine's layer specs."""

    num_tokens: list[int] = Field(max_length=MAX_PROFILE_LENGTHS)
    prefill_s: list[Annotated[float, Field(gt=0.0)]] = Field(max_length=MAX_PROFILE_LENGTHS)
    kv_bytes: list[Annotated[int, Field(ge=0)]] = Field(max_length=MAX_PROFILE_LENGTHS)
    decode_batch: int = Field(0, ge=0, le=64)
    decode_step_s: float = Field(0.0, ge=0.0)  # one step of the whole batch; 0: not measured


class BlockCounts(Message):
    """A worker's KV blocks: ``leased`` are held by a request; ``cached`` are free but keep a
    prefix-cache hash (evictable); ``free`` counts every unreferenced block, cached included."""

    total: int
    free: int
    cached: int
    leased: int


class WorkerCheck(Message):
    """GET /internal/check on a worker: pool integrity and everything that could leak.

    Idle and healthy means: ``integrity_error`` None, no leased blocks, no request waiting,
    running or parked, no KV connection, landing or awaited reservation, nothing sending."""

    name: str = Field(max_length=MAX_NAME)
    pid: int
    epoch: int
    role: Role
    integrity_error: str | None = None
    blocks: BlockCounts
    num_waiting: int
    num_running: int
    num_parked: int
    num_streams: int  # request streams the asyncio side still follows
    kv_connections: int  # open KV receiver connections
    kv_landings: int  # transfers landing, parked for resume, or complete and unreleased
    kv_allocated_bytes: int
    kv_awaited: int  # reservations waiting for KV
    kv_sending: int  # prefill commands whose KV is being sent
    asyncio_tasks: int
    threads: int
    # glibc's allocator over every arena (``prfaas.libc.heap_bytes``); None elsewhere. Not a
    # leak check (a busy worker holds activations): the soak follows them beside RssAnon.
    heap_in_use_bytes: int | None = None
    heap_free_bytes: int | None = None

    @property
    def idle_clean(self) -> bool:
        return (
            self.integrity_error is None
            and self.blocks.leased == 0
            and self.num_waiting + self.num_running + self.num_parked + self.num_streams == 0
            and self.kv_connections + self.kv_landings + self.kv_allocated_bytes == 0
            and self.kv_awaited + self.kv_sending == 0
        )


class LinkControl(Message):
    """POST /internal/link/{name} on the gateway of `prfaas serve`: drive the link emulator
    of that link (tests, rehearsals). Applied in order: rate, blackhole, stall, cut."""

    rate_gbps: float | None = Field(None, gt=0.0)  # None: leave the rate as it is
    uncapped: bool = False  # remove the rate cap
    # True: connections are accepted, nothing is forwarded, until False; None: unchanged.
    blackhole: bool | None = None
    stall_s: float = Field(0.0, ge=0.0, le=3600.0)  # nothing moves for this long
    cut: bool = False  # shut every open connection now
