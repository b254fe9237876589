"""One simulated request and what happened to it (times in simulated seconds)."""

from __future__ import annotations

from dataclasses import dataclass

from prfaas.router.types import RouteDecision


@dataclass(slots=True, eq=False)
class SimRequest:
    request_id: str
    arrival_s: float
    prompt_len: int
    output_len: int
    hash_ids: tuple[int, ...] = ()
    decision: RouteDecision | None = None
    cached_tokens: int = 0  # actually hit at the prefill instance
    prefill_start_s: float = -1.0
    prefill_end_s: float = -1.0
    kv_landed_s: float = -1.0
    first_token_s: float = -1.0
    finish_s: float = -1.0
    tpot_s: float = 0.0

    @property
    def incremental_tokens(self) -> int:
        return self.prompt_len - self.cached_tokens

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s < 0 else self.first_token_s - self.arrival_s
