"""A request inside one engine: its tokens, progress, and an explicit state machine.

States and who moves a request between them::

    WAITING ──schedule──▶ PREFILLING ──last prompt chunk──▶ DECODING ──stop──▶ FINISHED
       ▲                     │  │                              │
       └──────preempt────────┘  └─prefill_only─▶ SENDING_KV ──released──▶ FINISHED
    WAITING_FOR_KV ──KV landed──▶ DECODING          (any live state) ──abort──▶ ABORTED
    WAITING_FOR_KV ──KV landed without the first token──▶ PREFILLING (the last prompt token)
    WAITING_FOR_KV ──KV failed──▶ WAITING   (fallback: prefill locally)

A prefill-only request (the prefill role) samples its first token, then holds its blocks in
SENDING_KV until the KV is exported and ``release`` is called.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.hashing import BlockHash, block_hashes


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    WAITING_FOR_KV = "waiting_for_kv"
    PREFILLING = "prefilling"
    DECODING = "decoding"
    SENDING_KV = "sending_kv"
    FINISHED = "finished"
    ABORTED = "aborted"

    @property
    def is_done(self) -> bool:
        return self in (RequestStatus.FINISHED, RequestStatus.ABORTED)


S = RequestStatus
ALLOWED_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    S.WAITING: frozenset({S.PREFILLING, S.ABORTED}),
    S.WAITING_FOR_KV: frozenset({S.DECODING, S.PREFILLING, S.WAITING, S.ABORTED}),
    S.PREFILLING: frozenset({S.DECODING, S.SENDING_KV, S.WAITING, S.FINISHED, S.ABORTED}),
    S.DECODING: frozenset({S.WAITING, S.FINISHED, S.ABORTED}),
    S.SENDING_KV: frozenset({S.FINISHED, S.ABORTED}),
    S.FINISHED: frozenset(),
    S.ABORTED: frozenset(),
}


class InvalidTransitionError(RuntimeError):
    pass


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    root_hash: BlockHash  # binds the block hashes to the model fingerprint and tenant salt
    block_size: int
    prefill_only: bool = False
    prompt: str | None = None
    arrival_time: float = field(default_factory=time.monotonic)

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    # Tokens whose KV is in this request's blocks; the next step computes from here.
    num_computed_tokens: int = 0
    # Prompt tokens served from the prefix cache (or imported) at admission.
    num_cached_tokens: int = 0
    num_preemptions: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    first_token_time: float | None = None
    _hashes: list[BlockHash] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_ids: list[int] = list(self.prompt_token_ids)  # prompt + outputs

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def block_hashes(self) -> list[BlockHash]:
        """Hashes of every full block of ``token_ids``, extended incrementally."""
        num_full = self.num_tokens // self.block_size
        if len(self._hashes) < num_full:
            parent = self._hashes[-1] if self._hashes else None
            self._hashes.extend(
                block_hashes(
                    self.token_ids,
                    self.block_size,
                    self.root_hash,
                    start=len(self._hashes),
                    parent=parent,
                )
            )
        return self._hashes

    def move_to(self, new: RequestStatus) -> None:
        if new not in ALLOWED_TRANSITIONS[self.status]:
            raise InvalidTransitionError(
                f"request {self.request_id}: {self.status.value} -> {new.value} not allowed"
            )
        self.status = new

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.output_token_ids.append(token_id)
        if self.first_token_time is None:
            self.first_token_time = time.monotonic()
