"""Plain-text tables for ``prfaas plan`` and ``prfaas kv-throughput``."""

from __future__ import annotations

from collections.abc import Sequence

from prfaas.planner.deployments import PlanResult
from prfaas.planner.search import balance_checks
from prfaas.planner.units import format_tokens


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if value is None else fmt.format(value)


def _int(value: int | None) -> str:
    return "—" if value is None else str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def plan_table(results: Sequence[PlanResult], baseline: str | None = None) -> str:
    """One column per deployment, rows as in the paper's Table 6."""
    base = next((r for r in results if r.kind == "homogeneous_pd"), None)
    if baseline is not None:
        base = next((r for r in results if r.deployment == baseline), base)
    headers = ["", *(r.deployment for r in results)]
    rows: list[list[str]] = [
        [
            "threshold t",
            *(
                "—" if r.threshold_tokens is None else format_tokens(r.threshold_tokens)
                for r in results
            ),
        ],
        [
            "N_prfaas / N_p / N_d",
            *(f"{_int(r.n_prfaas)} / {_int(r.n_p)} / {r.n_d}" for r in results),
        ],
        [
            "Θ_prfaas / Θ_pd-p / Θ_pd-d (req/s)",
            *(
                f"{_num(r.theta_prfaas_rps)} / {_num(r.theta_pd_p_rps)} / {_num(r.theta_pd_d_rps)}"
                for r in results
            ),
        ],
        ["Λ_max (req/s)", *(f"{r.throughput_rps:.2f}" for r in results)],
    ]
    if base is not None:
        rows.append(
            [
                "vs " + base.deployment,
                *(f"{r.throughput_rps / base.throughput_rps:.2f}×" for r in results),
            ]
        )
    rows += [
        ["bottleneck", *(r.bottleneck for r in results)],
        ["offload fraction p", *(f"{r.offload_fraction:.3f}" for r in results)],
        [
            "l_long / l_short (tokens)",
            *(
                f"{_num(r.l_long_tokens, '{:.0f}')} / {_num(r.l_short_tokens, '{:.0f}')}"
                for r in results
            ),
        ],
        [
            "PrfaaS egress (Gbps, link share)",
            *(
                "—" if r.link_share is None else f"{r.egress_gbps:.2f} ({100 * r.link_share:.1f}%)"
                for r in results
            ),
        ],
    ]
    text = format_table(headers, rows)
    notes = []
    for r in results:
        checks = balance_checks(r)
        if checks is not None:
            notes.append(
                f"{r.deployment}: eq. 7 gap {100 * checks[0]:.1f}%, "
                f"eq. 8 (Θ_prfaas + Θ_pd-p vs Θ_pd-d) {100 * checks[1]:+.1f}%"
            )
    return text + ("\n\n" + "\n".join(notes) if notes else "")
