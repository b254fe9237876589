"""PNGs of runs: TTFT CDF per policy, and egress / queue depth / threshold over time.

Small on purpose (docs/img holds them): 7 x 3.5 in at 80 dpi, Agg backend, no display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from prfaas.sim.metrics import RunResult


def write_plots(runs: Mapping[str, RunResult], out_dir: Path, prefix: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=80)
    for policy, result in runs.items():
        ttfts = sorted(result.ttfts_s())
        finite = [t for t in ttfts if math.isfinite(t)]
        if not finite:
            continue
        ys = [(i + 1) / len(ttfts) for i in range(len(finite))]
        ax.plot(finite, ys, label=policy)
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"{prefix}: TTFT CDF")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(_save(fig, out_dir / f"sim-{prefix}-ttft-cdf.png"))
    plt.close(fig)

    fig, axes = plt.subplots(4, 1, figsize=(7, 7.5), dpi=80, sharex=True)
    for policy, result in runs.items():
        s = result.series
        minutes = [t / 60 for t in s.time_s]
        if s.egress_gbps:
            axes[0].plot(minutes[: len(s.egress_gbps)], s.egress_gbps, label=f"{policy} egress")
        queue = [a + b for a, b in zip(s.queue_prfaas, s.queue_pd_p, strict=True)]
        axes[1].plot(minutes, queue, label=f"{policy} prefill")
        if s.transfers_egress:
            flows = s.transfers_egress
            axes[1].plot(minutes[: len(flows)], flows, ":", label=f"{policy} KV in flight")
        axes[2].plot(minutes, [t / 1000 for t in s.threshold_tokens], label=policy)
        axes[3].plot(minutes, _smooth(s.busy_pd_p), label=f"{policy} PD-P")
        if any(s.busy_prfaas):
            axes[3].plot(minutes, _smooth(s.busy_prfaas), ":", label=f"{policy} PrfaaS")
    first = next(iter(runs.values()), None)
    if first is not None and first.series.link_capacity_gbps:
        s = first.series
        axes[0].plot([t / 60 for t in s.time_s], s.link_capacity_gbps, "k--", label="capacity")
    axes[0].set_ylabel("Gbps")
    axes[0].set_yscale("symlog", linthresh=1)
    axes[1].set_ylabel("requests")
    peak = max((max(line.get_ydata(), default=0) for line in axes[1].get_lines()), default=0)
    if peak > 50:  # a pile-up: keep the everyday queue readable next to it
        axes[1].set_yscale("symlog", linthresh=10)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylabel("t (K tokens)")
    axes[3].set_ylabel("prefill busy")
    axes[3].set_xlabel("time (min)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(f"{prefix}: egress, queues, threshold, prefill utilization")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / f"sim-{prefix}-timeline.png"))
    plt.close(fig)
    return paths


def _smooth(values: list[float], width: int = 6) -> list[float]:
    """Trailing mean over ``width`` samples (instantaneous busy flags are 0/1-ish)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def _save(fig: object, path: Path) -> Path:
    """Save as a 64-colour palette PNG: a third of the RGBA size, same look for line plots."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # type: ignore[attr-defined]
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=64).save(path, optimize=True)
    return path
