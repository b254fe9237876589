"""Published prefill timings the efficiency model is calibrated and checked on, each cited.

Lengths are tokens; times are seconds for one prompt on one instance. ``role`` says whether a
point is fitted (``fit``) or held out to measure the model's error on data it never saw
(``holdout``). Rows marked derived are arithmetic on published tables, not printed figures.
"""

from __future__ import annotations

from dataclasses import dataclass

PAPER = "arXiv 2604.15039 (PrfaaS paper)"
NVIDIA_GH200 = (
    "NVIDIA technical blog, 'Low Latency Inference Chapter 2: Blackwell is Coming. NVIDIA GH200 "
    "NVL32 with NVLink Switch Gives Signs of Big Leap in Time to First Token Performance' "
    "(developer.nvidia.com/blog), TensorRT-LLM on 32 GH200; precision not stated there"
)


_TRT = "TensorRT-LLM"


@dataclass(frozen=True)
class PrefillMeasurement:
    model: str  # a planner preset
    gpu: str  # a catalog GPU
    gpus_per_instance: int
    num_tokens: int
    prefill_s: float
    source: str
    role: str  # "fit" | "holdout"
    system: str  # the serving stack that measured it: constants like overhead_s belong to one

    def __post_init__(self) -> None:
        if self.role not in ("fit", "holdout"):
            raise ValueError(f"role must be fit or holdout, got {self.role!r}")
        if self.num_tokens < 1 or self.prefill_s <= 0 or self.gpus_per_instance < 1:
            raise ValueError(f"bad measurement {self}")


def _paper(
    gpu: str, num_tokens: int, prefill_s: float, where: str, role: str
) -> PrefillMeasurement:
    return PrefillMeasurement(
        "paper-1t-hybrid", gpu, 8, num_tokens, prefill_s, f"{PAPER} {where}", role, "paper"
    )


PUBLISHED: tuple[PrefillMeasurement, ...] = (
    # Table 5: the 1T hybrid on one 8xH200 instance (rows read as decimal thousands).
    _paper("h200", 1000, 0.44, "Table 5", "fit"),
    _paper("h200", 8000, 0.72, "Table 5", "holdout"),
    _paper("h200", 32000, 1.84, "Table 5", "fit"),
    _paper("h200", 128000, 7.40, "Table 5", "fit"),
    # Derived from Table 6 (the PD-P and homogeneous columns): 8xH20 at l_short and l_long.
    _paper("h20", 10200, 1.83, "Table 6, derived (PD-P at l_short)", "holdout"),
    _paper("h20", 27500, 4.27, "Table 6, derived (homogeneous PD at l_long)", "fit"),
    # Dense GQA models on a 32-GPU NVLink domain: another model family, system and scale.
    PrefillMeasurement("llama-3.1-70b", "gh200", 32, 32768, 0.472, NVIDIA_GH200, "holdout", _TRT),
    PrefillMeasurement("llama-3.1-405b", "gh200", 32, 32768, 1.6, NVIDIA_GH200, "holdout", _TRT),
    PrefillMeasurement("llama-3.1-405b", "gh200", 32, 122880, 7.5, NVIDIA_GH200, "holdout", _TRT),
)
