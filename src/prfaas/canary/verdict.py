"""One path's output against its reference: where the tokens part, how far the logprobs
moved before that, whether the decode side really used the KV it was sent, and whether that
is within the codec's bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PathOutput:
    """A greedy run on one path. ``logprobs[i]`` is the logprob of ``token_ids[i]`` (empty
    when the path cannot report them); ``computed_prompt_tokens`` the prompt tokens the decode
    instance computed itself (0 when the shipped KV was used)."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    computed_prompt_tokens: int


@dataclass(frozen=True)
class Bound:
    """What a codec may change: identical tokens required or not, and the largest |Δ logprob|
    over the tokens both runs share."""

    identical_tokens: bool
    max_abs_dlogprob: float


# Lossless transport must change nothing beyond float noise (fp32: 1e-4). The quantized
# codecs' bounds are per model: deploy.yaml's ``canary.bounds`` sets them. The defaults are
# BOUND_MARGIN times the largest |Δ logprob| `benchmarks/canary_bounds.py` measured on the
# embedded default (SmolLM2-135M, fp32; 7 prompts, 32 greedy tokens, docs/canary.md), the
# largest of the runs there (the same prompts measure differently from run to run: the
# batches each path's steps fall into differ): the canary's own prompts and lengths differ,
# and a longer common prefix drifts further.
BOUND_MARGIN = 3.0
MEASURED_SMOLLM2 = {"int8": 0.076, "fp8": 0.270}
DEFAULT_BOUNDS: Mapping[str, Bound] = {
    "raw": Bound(True, 1e-4),
    **{codec: Bound(False, BOUND_MARGIN * dlp) for codec, dlp in MEASURED_SMOLLM2.items()},
}


def bound_for(codec: str, bounds: Mapping[str, Bound] = DEFAULT_BOUNDS) -> Bound:
    """The bound of a codec name such as ``int8+zstd``: its lossy stage's (the lossless
    stage changes no bit)."""
    lossy = codec.partition("+")[0]
    return bounds.get(lossy, bounds.get("raw", DEFAULT_BOUNDS["raw"]))


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str  # "" when ok
    first_divergence: int | None  # index of the first differing output token, None if none
    max_abs_dlogprob: float  # over the common prefix (0.0 when no logprobs)
    fake_disaggregation: bool


def judge(reference: PathOutput, run: PathOutput, *, shipped: bool, bound: Bound) -> Verdict:
    """``run`` (a path whose KV was ``shipped`` from another instance) against ``reference``."""
    common = min(len(reference.token_ids), len(run.token_ids))
    first = next(
        (i for i in range(common) if reference.token_ids[i] != run.token_ids[i]),
        None if len(reference.token_ids) == len(run.token_ids) else common,
    )
    prefix = common if first is None else first
    pairs = zip(reference.logprobs[:prefix], run.logprobs[:prefix], strict=False)
    max_d = max((abs(a - b) for a, b in pairs), default=0.0)
    fake = shipped and run.computed_prompt_tokens > 0
    reasons = []
    if fake:
        reasons.append(
            f"fake disaggregation: the decode side computed {run.computed_prompt_tokens} "
            "prompt tokens of a prompt whose KV it was sent (a silent recompute, or the KV "
            "never landed and it fell back)"
        )
    if bound.identical_tokens and first is not None:
        reasons.append(f"tokens differ from position {first}")
    if max_d > bound.max_abs_dlogprob:
        reasons.append(f"|Δ logprob| {max_d:.3g} > {bound.max_abs_dlogprob:g}")
    return Verdict(not reasons, "; ".join(reasons), first, max_d, fake)
