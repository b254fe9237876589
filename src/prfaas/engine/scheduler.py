"""The batch scheduler: decides what runs in the next step of one instance. Plain Python.

Each step has a token budget. Running requests go first, in admission order (a decoding
request needs one token, a prefilling one its next chunk); then waiting requests are
admitted in arrival order while budget, ``max_num_seqs`` and free blocks allow, each taking
its longest cached prefix first. A prompt longer than the remaining budget is prefilled in
chunks over several steps (chunked prefill), so decodes never stall behind a long prompt.
When blocks run out, the most recently admitted running request is preempted: its blocks
are freed and it waits again (its prefix usually comes back from the cache).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prfaas.engine.request import Request, RequestStatus
from prfaas.kvcache.linear_state import StatePlan
from prfaas.kvcache.manager import CacheManager


@dataclass(frozen=True)
class ScheduledChunk:
    """Tokens ``[start, start + len(token_ids))`` of one request, computed this step."""

    request_id: str
    token_ids: list[int]
    start: int
    block_table: list[int]
    # True when the chunk ends at the request's last known token: its logits pick a token.
    sample: bool
    # Linear-attention state slots for this chunk (hybrid models); None for dense models.
    state: StatePlan | None = None


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.chunks)


class Scheduler:
    def __init__(self, kv: CacheManager, max_num_batched_tokens: int, max_num_seqs: int) -> None:
        self.kv = kv
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_num_seqs = max_num_seqs
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        # Requests that hold blocks but are not scheduled: prefill-only requests whose KV
        # awaits export (SENDING_KV) and decode requests whose KV is landing (WAITING_FOR_KV).
        self.parked: dict[str, Request] = {}

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running) + len(self.parked)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled: set[str] = set()
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens - req.num_computed_tokens, budget)
            while not self.kv.allocate(req.request_id, req.num_computed_tokens + num_new):
                victim = self.running[-1]
                self._preempt(victim)
                out.preempted.append(victim.request_id)
                if victim is req:
                    break
            else:
                out.chunks.append(self._chunk(req, num_new))
                scheduled.add(req.request_id)
                budget -= num_new
                i += 1
                continue
            break  # ``req`` itself was preempted; nothing behind it can run either
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            if out.preempted:
                break  # blocks are short this step; admitting more would thrash
            req = self.waiting[0]
            # Prompt logprobs need every prompt position computed: no prefix hit then.
            skip = req.params.prompt_logprobs is not None
            prefix = [] if skip else self.kv.find_prefix(req.block_hashes, req.num_tokens)
            num_computed = len(prefix) * self.kv.block_size
            num_new = min(req.num_tokens - num_computed, budget)
            if not self.kv.allocate(req.request_id, num_computed + num_new, prefix):
                break
            self.waiting.popleft()
            req.num_computed_tokens = num_computed
            if req.num_preemptions == 0:
                req.num_cached_tokens = min(num_computed, req.num_prompt_tokens)
            req.move_to(RequestStatus.PREFILLING)
            self.running.append(req)
            out.chunks.append(self._chunk(req, num_new))
            budget -= num_new
        return out

    def update(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Request]:
        """Advance the scheduled requests by one step; returns those that got a new token.

        ``sampled`` maps the request id of every chunk with ``sample`` set to its new token.
        A prefill-only request is parked in SENDING_KV as soon as it has its first token.
        """
        got_token: list[Request] = []
        for chunk in out.chunks:
            req = self._find_running(chunk.request_id)
            if req is None:
                continue  # aborted during the step
            req.num_computed_tokens += len(chunk.token_ids)
            self.kv.cache_blocks(req.request_id, req.block_hashes, req.num_computed_tokens)
            if not chunk.sample:
                continue
            req.append_token(sampled[req.request_id])
            got_token.append(req)
            if req.status is RequestStatus.PREFILLING:
                if req.prefill_only:
                    req.move_to(RequestStatus.SENDING_KV)
                    self.running.remove(req)
                    self.parked[req.request_id] = req
                else:
                    req.move_to(RequestStatus.DECODING)
        return got_token

    def park(self, req: Request, num_tokens: int) -> bool:
        """Hold blocks for ``num_tokens`` tokens of a request whose KV will be imported."""
        if not self.kv.allocate(req.request_id, num_tokens):
            return False
        self.parked[req.request_id] = req
        return True

    def unpark_running(self, req: Request) -> None:
        """A parked request whose KV has landed starts decoding."""
        del self.parked[req.request_id]
        self.running.append(req)

    def unpark_prefilling(self, req: Request) -> None:
        """A parked request whose KV has landed for all but its last prompt token (the
        prefill side sent no first token): it keeps its blocks and computes that token."""
        del self.parked[req.request_id]
        req.move_to(RequestStatus.PREFILLING)
        self.running.append(req)

    def unpark_waiting(self, req: Request) -> None:
        """A parked request whose KV failed: free its blocks and prefill it locally."""
        del self.parked[req.request_id]
        self.kv.free(req.request_id)
        req.num_computed_tokens = 0
        self.waiting.append(req)

    def finish(self, req: Request, status: RequestStatus) -> None:
        """Move ``req`` to FINISHED or ABORTED and free its blocks, wherever it is."""
        if req in self.running:
            self.running.remove(req)
        elif req.request_id in self.parked:
            del self.parked[req.request_id]
        elif req in self.waiting:
            self.waiting.remove(req)
        req.move_to(status)
        if self.kv.has_request(req.request_id):
            self.kv.free(req.request_id)

    def requests(self) -> Iterable[Request]:
        yield from self.running
        yield from self.waiting
        yield from self.parked.values()

    def _chunk(self, req: Request, num_new: int) -> ScheduledChunk:
        start = req.num_computed_tokens
        end = start + num_new
        return ScheduledChunk(
            request_id=req.request_id,
            token_ids=req.token_ids[start:end],
            start=start,
            block_table=list(self.kv.block_table(req.request_id)),
            sample=end == req.num_tokens,
            state=self.kv.plan_state(
                req.request_id, start, end, req.block_hashes, req.num_prompt_tokens
            ),
        )

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req.request_id)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.move_to(RequestStatus.WAITING)
        self.waiting.appendleft(req)

    def _find_running(self, request_id: str) -> Request | None:
        for req in self.running:
            if req.request_id == request_id:
                return req
        return None
