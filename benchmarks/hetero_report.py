"""benchmarks/hetero.py's report: the planner's prediction from the profiles the PrfaaS
gateway measured at start-up, and the table beside it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from prfaas.deploy.profiling import MeasuredPrefill
from prfaas.planner.deployments import HomogeneousPd, NaiveHeterogeneous, PrfaasPd
from prfaas.planner.search import plan
from prfaas.planner.throughput import DecodeSpec
from prfaas.planner.workload import EmpiricalLengths

if TYPE_CHECKING:
    from benchmarks.hetero_run import DeploymentRun

THRESHOLD_STEP_TOKENS = 16.0


def _measured(threshold: dict[str, Any], cluster: str) -> MeasuredPrefill:
    p = threshold["prefill_s"][cluster]
    return MeasuredPrefill(
        cluster, p["instance"], tuple(p["num_tokens"]), tuple(p["seconds"]), tuple(p["kv_bytes"])
    )


def planner_prediction(
    runs: dict[str, DeploymentRun], output_tokens: int, link_gbps: float
) -> dict[str, Any]:
    """Λ_max of each deployment as deployed (PrfaaS: 1 remote, 1 PD-P, 1 PD-D at the live t;
    homogeneous: 2 PD-P, 1 PD-D; naive: 1 remote, 2 PD-D) on the PrfaaS run's start-up
    profiles (T_prefill of the local and the remote prefill instance, S_kv, one decode step)
    and the workload's real prompt lengths. The homogeneous and naive runs profile nothing
    (they have no t): the same instance types, measured once, serve all three.

    Twice: with the profiled decode step (a batch of ``decode_batch``, so decode capacity is
    that batch, a floor), and with decode unbounded (prefill and link only, as the gateway
    solves t), since the live decode batch grows with the load."""
    run = runs.get("prfaas")
    if run is None or run.threshold.get("source") != "profiled":
        return {"error": "needs the prfaas deployment with a profiled t"}
    th = run.threshold
    decode = DecodeSpec(int(th["decode_batch"]), float(th["decode_step_s"]))
    workload = EmpiricalLengths(tuple(r.prompt_tokens for r in run.results if r.ok))
    inputs = {
        **{
            f"{c}_prefill_s": dict(zip(p["num_tokens"], p["seconds"], strict=True))
            for c, p in th["prefill_s"].items()
        },
        "decode_step_s": decode.step_s,
        "decode_batch": decode.max_batch_size,
        "link_gbps": link_gbps,
        "mean_prompt_tokens": workload.mean_tokens,
    }
    args = (th, workload, output_tokens, link_gbps, run.threshold_start_tokens)
    return {
        "inputs": inputs,
        **_predict(*args, decode),
        "prefill_only": _predict(*args, UNBOUNDED_DECODE),
    }


UNBOUNDED_DECODE = DecodeSpec(10**9, 1.0)


def _predict(
    th: dict[str, Any],
    workload: EmpiricalLengths,
    output_tokens: int,
    link_gbps: float,
    t_live: float,
    decode: DecodeSpec,
) -> dict[str, Any]:
    local = _measured(th, "local").planner_profile()
    remote = _measured(th, "remote").planner_profile()
    pp = plan(
        PrfaasPd("prfaas", 1, remote, 2, local, decode, link_gbps),
        workload,
        output_tokens,
        THRESHOLD_STEP_TOKENS,
    )
    assert pp.curves is not None
    row = pp.curves.throughput_rps[pp.curves.n_p_values.index(1)]
    col = int(np.argmin(np.abs(pp.curves.thresholds_tokens - t_live)))
    homog = plan(HomogeneousPd("homogeneous", 3, local, decode), workload, output_tokens)
    assert homog.curves is not None
    homog_rps = float(homog.curves.throughput_rps[homog.curves.n_p_values.index(2), 0])
    naive = plan(
        NaiveHeterogeneous("naive", 1, remote, 2, decode, link_gbps), workload, output_tokens
    )
    prfaas_rps = float(row[col])
    return {
        "prfaas_rps": prfaas_rps,
        "prfaas_at_tokens": float(pp.curves.thresholds_tokens[col]),
        "prfaas_best_rps": float(row.max()),
        "prfaas_best_t_tokens": float(pp.curves.thresholds_tokens[int(np.argmax(row))]),
        "prfaas_bottleneck": pp.bottleneck,
        "homogeneous_rps": homog_rps,
        "naive_rps": naive.throughput_rps,
        "naive_bottleneck": naive.bottleneck,
        "ratio_prfaas_homogeneous": prfaas_rps / homog_rps,
        "ratio_naive_homogeneous": naive.throughput_rps / homog_rps,
    }


def _planner_lines(pl: dict[str, Any], label: str) -> str:
    return (
        f"planner, {label}: prfaas {pl['prfaas_rps']:.3f} req/s at t="
        f"{pl['prfaas_at_tokens']:.0f} (best {pl['prfaas_best_rps']:.3f} at t="
        f"{pl['prfaas_best_t_tokens']:.0f}, bound by {pl['prfaas_bottleneck']}), homogeneous "
        f"{pl['homogeneous_rps']:.3f}, naive {pl['naive_rps']:.3f} ({pl['naive_bottleneck']})"
    )


def format_report(report: dict[str, Any]) -> str:
    s, deps, pl = report["setup"], report["deployments"], report["planner"]
    lines = [
        f"{s['model']}; remote device {s['remote_device']}, {s['dtype']}; "
        f"{s['cpu_cores']} cores, {s['threads_per_cpu_instance']} torch threads per CPU instance",
        f"{s['num_prompts']} prompts, {s['prompt_len']} (mean {s['mean_prompt_len']:.0f}), "
        f"{s['output_len']} output tokens, rate {s['request_rate']} req/s; link "
        f"{s['link_gbps']} Gbps, RTT {s['rtt_ms']} ms; SLO TTFT <= {s['slo']['ttft_s']} s and "
        f"TPOT <= {s['slo']['tpot_ms']} ms; wall {s['wall_s']:.0f} s",
        f"{'deployment':<13}{'done':>6}{'req/s':>8}{'SLO req/s':>10}{'TTFT mean':>10}"
        f"{'TTFT P90':>9}{'t':>7}{'egress Gb/s':>12}{'fallbacks':>10}  routes",
    ]
    for kind, d in deps.items():
        t = "-" if kind != "prfaas" else f"{d['threshold_start_tokens']:.0f}"
        routes = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(d["route_share"].items()))
        lines.append(
            f"{kind:<13}{d['completed']:>3}/{d['completed'] + d['failed']:<2}"
            f"{d['throughput_rps']:>8.3f}{d['slo_throughput_rps']:>10.3f}"
            f"{d['ttft_ms']['mean'] / 1e3:>9.2f}s{d['ttft_ms']['p90'] / 1e3:>8.2f}s{t:>7}"
            f"{d['egress_gbps']:>12.4f}{d['fallbacks']:>10}  {routes}"
        )
    if "error" in pl:
        lines.append(f"planner: {pl['error']}")
        return "\n".join(lines)
    batch = pl["inputs"]["decode_batch"]
    lines.append(_planner_lines(pl, f"profiled decode (batch {batch})"))
    lines.append(_planner_lines(pl["prefill_only"], "decode unbounded"))
    if "prfaas" in deps and "homogeneous" in deps:
        live = deps["prfaas"]["throughput_rps"] / deps["homogeneous"]["throughput_rps"]
        lines.append(
            f"PrfaaS / homogeneous throughput: live {live:.2f}x, planner "
            f"{pl['ratio_prfaas_homogeneous']:.2f}x (decode unbounded "
            f"{pl['prefill_only']['ratio_prfaas_homogeneous']:.2f}x)"
        )
    if "naive" in deps and "homogeneous" in deps:
        live = deps["naive"]["throughput_rps"] / deps["homogeneous"]["throughput_rps"]
        lines.append(
            f"naive / homogeneous throughput:  live {live:.2f}x, planner "
            f"{pl['ratio_naive_homogeneous']:.2f}x (decode unbounded "
            f"{pl['prefill_only']['ratio_naive_homogeneous']:.2f}x)"
        )
    return "\n".join(lines)
