"""PNG plots of the search (the paper's Figure 5): Λ_max against t and against N_p."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from prfaas.planner.deployments import PlanResult


def write_plots(results: Sequence[PlanResult], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    flat = {r.deployment: r.throughput_rps for r in results if r.curves is None}

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in results:
        if r.kind != "prfaas_pd" or r.curves is None:
            continue
        curves = r.curves
        for i, n_p in enumerate(curves.n_p_values):
            style = "-" if n_p == r.n_p else ":"
            ax.plot(
                curves.thresholds_tokens / 1000,
                curves.throughput_rps[i],
                style,
                label=f"{r.deployment}, N_p/N_d = {n_p}/{r.n_p + r.n_d - n_p}"
                if r.n_p is not None and r.n_d is not None
                else r.deployment,
            )
        if r.threshold_tokens is not None:
            ax.axvline(r.threshold_tokens / 1000, color="grey", lw=0.8)
    references = [r for r in results if r.kind != "prfaas_pd"]
    for r, color in zip(references, ("black", "grey", "tab:brown", "tab:olive"), strict=False):
        ax.axhline(r.throughput_rps, ls="--", lw=1, color=color, label=f"{r.deployment} (no t)")
    ax.set_xlabel("routing threshold t (K tokens, 1K = 1000)")
    ax.set_ylabel("Λ_max (req/s)")
    ax.set_xlim(0, 80)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("Λ_max against the threshold t")
    fig.tight_layout()
    path = out_dir / "planner-throughput-vs-threshold.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in results:
        if r.curves is None:
            continue
        best_per_split = np.nanmax(r.curves.throughput_rps, axis=1)
        ax.plot(r.curves.n_p_values, best_per_split, "o-", label=r.deployment)
    for name, value in flat.items():
        ax.axhline(value, ls="--", lw=1, label=f"{name} (fixed roles)")
    ax.set_xlabel("N_p (PD prefill instances; N_d = N − N_p)")
    ax.set_ylabel("Λ_max (req/s), best t per split")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title("Λ_max against the prefill/decode split")
    fig.tight_layout()
    path = out_dir / "planner-throughput-vs-split.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
