"""Fit the efficiency model's constants to measured prefill times and report its error.

Given ``attention_half_tokens``, ``linear`` and ``mbu`` (which the public data cannot pin
down: see docs/planner.md), T(l) is linear in (overhead_s, 1/gemm, per_token_layer_s,
1/attention) on each side of the GEMM-vs-weight-read max, so the fit is a least squares on
relative error, repeated until the side each point falls on stops changing.

    .venv/bin/prfaas kv-throughput --calibration    # the table of fit and held-out errors
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from prfaas.planner.efficiency import (
    CALIBRATED,
    Efficiency,
    efficiency_prefill_s,
    prefill_terms,
)
from prfaas.planner.hardware import get_gpu
from prfaas.planner.measurements import PUBLISHED, PrefillMeasurement
from prfaas.planner.model import PlannerModel, load_planner_model
from prfaas.planner.report import format_table
from prfaas.planner.roofline import Instance, prefill_s

ATTENTION_HALF_TOKENS = 1024.0  # assumed; the fit moves < 0.1% between 0 and 8K
LINEAR_EFFICIENCY = 0.1  # assumed; KDA's FLOPs are < 1% of the 1T model's prefill


@dataclass(frozen=True)
class Residual:
    measurement: PrefillMeasurement
    predicted_s: float

    @property
    def relative_error(self) -> float:
        return self.predicted_s / self.measurement.prefill_s - 1.0


def _setup(m: PrefillMeasurement) -> tuple[PlannerModel, Instance]:
    return load_planner_model(m.model), Instance(get_gpu(m.gpu), m.gpus_per_instance)


def fit_efficiency(
    measurements: Sequence[PrefillMeasurement],
    attention_half_tokens: float = ATTENTION_HALF_TOKENS,
    linear: float = LINEAR_EFFICIENCY,
    mbu: float = 0.7,
) -> Efficiency:
    """Least-squares relative-error fit of the four free constants; ValueError if the data
    cannot support a physical answer (a negative cost or an efficiency above 1)."""
    if len(measurements) < 4:
        raise ValueError(f"need >= 4 measurements for 4 constants, got {len(measurements)}")
    terms = [prefill_terms(*_setup(m), m.num_tokens, attention_half_tokens) for m in measurements]
    measured = np.array([m.prefill_s for m in measurements])
    weight_read = np.array([t.weight_read_s / mbu for t in terms])
    known = measured - np.array([t.linear_s / linear for t in terms])
    read_bound = np.zeros(len(terms), dtype=bool)
    for _ in range(len(terms) + 1):
        design = np.array(
            [
                [1.0, 0.0 if bound else t.gemm_s, t.token_layers_per_gpu, t.attention_s]
                for t, bound in zip(terms, read_bound, strict=True)
            ]
        )
        target = known - np.where(read_bound, weight_read, 0.0)
        coef, *_ = np.linalg.lstsq(design / measured[:, None], target / measured, rcond=None)
        now_bound = weight_read > design[:, 1] * coef[1]
        now_bound |= read_bound & (weight_read > np.array([t.gemm_s for t in terms]) * coef[1])
        if np.array_equal(now_bound, read_bound):
            break
        read_bound = now_bound
    overhead, inv_gemm, per_token_layer, inv_attention = (float(c) for c in coef)
    if min(overhead, per_token_layer) < 0 or inv_gemm < 1 or inv_attention < 1:
        raise ValueError(
            f"fit is not physical: overhead {overhead:.3g} s, per-token-layer "
            f"{per_token_layer:.3g} s, gemm {1 / inv_gemm:.3g}, attention {1 / inv_attention:.3g}"
        )
    return Efficiency(
        overhead_s=overhead,
        gemm=1.0 / inv_gemm,
        per_token_layer_s=per_token_layer,
        attention=1.0 / inv_attention,
        attention_half_tokens=attention_half_tokens,
        linear=linear,
        mbu=mbu,
    )


def residuals(efficiency: Efficiency, measurements: Sequence[PrefillMeasurement]) -> list[Residual]:
    return [
        Residual(m, efficiency_prefill_s(*_setup(m), efficiency, m.num_tokens))
        for m in measurements
    ]


def mean_abs_error(rows: Sequence[Residual]) -> float:
    return float(np.mean([abs(r.relative_error) for r in rows])) if rows else float("nan")


def calibrate_published() -> Efficiency:
    """The fit on ``PUBLISHED``'s ``fit`` rows (what ``CALIBRATED`` was computed from)."""
    return fit_efficiency([m for m in PUBLISHED if m.role == "fit"])


def roofline_s(m: PrefillMeasurement, mfu: float = 0.4) -> float:
    model, instance = _setup(m)
    return prefill_s(model, Instance(instance.gpu, instance.gpus_per_instance, mfu), m.num_tokens)


def print_calibration(as_json: bool = False) -> None:
    """The shipped constants against every published row: fitted, held out, and the roofline."""
    rows = residuals(CALIBRATED, PUBLISHED)
    records = [
        {
            "model": r.measurement.model,
            "instance": f"{r.measurement.gpus_per_instance}x{r.measurement.gpu}",
            "num_tokens": r.measurement.num_tokens,
            "role": r.measurement.role,
            "system": r.measurement.system,
            "measured_s": r.measurement.prefill_s,
            "efficiency_s": r.predicted_s,
            "efficiency_error": r.relative_error,
            "roofline_s": roofline_s(r.measurement),
            "roofline_error": roofline_s(r.measurement) / r.measurement.prefill_s - 1.0,
            "source": r.measurement.source,
        }
        for r in rows
    ]
    if as_json:
        print(json.dumps({"constants": asdict(CALIBRATED), "rows": records}, indent=2))
        return
    print(f"constants: {CALIBRATED}")
    headers = ["model", "instance", "tokens", "role", "measured s", "model s", "error", "roofline"]
    table = [
        [
            str(r["model"]),
            str(r["instance"]),
            str(r["num_tokens"]),
            str(r["role"]),
            f"{r['measured_s']:.3f}",
            f"{r['efficiency_s']:.3f}",
            f"{r['efficiency_error']:+.1%}",
            f"{r['roofline_error']:+.1%}",
        ]
        for r in records
    ]
    print(format_table(headers, table))
    for role in ("fit", "holdout"):
        for system in sorted({r.measurement.system for r in rows}):
            chosen = [
                r for r in rows if (r.measurement.role, r.measurement.system) == (role, system)
            ]
            if chosen:
                print(
                    f"mean |error|, {role}, {system}: {mean_abs_error(chosen):.1%} "
                    f"over {len(chosen)} rows"
                )
