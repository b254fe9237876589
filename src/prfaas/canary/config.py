"""The canary's settings: deploy.yaml's ``canary:`` section, the one config type."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from prfaas.canary.verdict import DEFAULT_BOUNDS, Bound

# Three lengths: inside one KV block, a few blocks, and many (block boundaries, chunked
# prefill and multi-layer transfers all take part). Plain prose: greedy decoding of it is
# stable, so a divergence means the path changed something.
DEFAULT_PROMPTS = (
    "The capital of France is",
    "Write a short paragraph about why the sky looks blue during the day and red at sunset. "
    "Mention Rayleigh scattering, the length of the path light takes through the air, and "
    "what changes when there is dust or smoke in the atmosphere.",
    " ".join(
        f"Step {i}: a request arrives at the gateway, is routed by prompt length and cache "
        f"affinity, prefilled on one cluster and decoded on another."
        for i in range(1, 13)
    ),
)


class BoundSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    identical_tokens: bool
    max_abs_dlogprob: float = Field(ge=0)

    def bound(self) -> Bound:
        return Bound(self.identical_tokens, self.max_abs_dlogprob)


class CanaryConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True  # a round every ``period_s``; on demand works either way
    period_s: float = Field(900.0, gt=0, le=7 * 86400)  # low rate: a few requests per path
    prompts: tuple[str, ...] = Field(DEFAULT_PROMPTS, min_length=1, max_length=32)
    max_tokens: int = Field(16, ge=1, le=512)
    # Each prompt also runs sampled (temperature 1) under this seed: seeded sampling must give
    # the same text on every path. None: greedy only.
    seed: int | None = Field(7, ge=0, le=2**63 - 1)
    probe_timeout_s: float = Field(120.0, gt=0, le=3600)
    quarantine: bool = False  # True: the router avoids a path that breaks its bound
    bounds: dict[str, BoundSpec] = Field(default_factory=dict)  # by lossy codec: raw/int8/fp8

    def codec_bounds(self) -> dict[str, Bound]:
        return {**DEFAULT_BOUNDS, **{name: spec.bound() for name, spec in self.bounds.items()}}
