"""PrfaaS on heterogeneous hardware, live: a compute-dense prefill instance (``--remote-device``,
a GPU where there is one) beside CPU instances, against all-CPU and all-prefill-remote.

Three deployments of three instances each, run one after another with `prfaas serve` on a
generated deploy.yaml and driven by `prfaas bench serve`'s client with the same seeded workload
(log-normal prompt lengths, fixed output length), the remote KV through the link emulator:
  prfaas       remote prefill on the device + PD-P and PD-D on CPU, t from the start-up profile
  homogeneous  PD-P x2 and PD-D on CPU, every prefill local
  naive        remote prefill on the device + PD-D x2 on CPU, every prefill remote
Each CPU instance gets ``max(1, (cores - 1) // 3)`` torch threads (cores: this process's
affinity) (``num_threads`` in the
deploy.yaml; one core is left to the gateway and the client), the device instance 2; threads
are counted, not bound to cores. The report gives, per deployment, completed req/s and req/s
within the SLO, TTFT, the t in force, KV egress over the link, and beside the live
PrfaaS/homogeneous ratio the planner's ratio on the profiles the PrfaaS gateway measured.

    .venv/bin/python benchmarks/hetero.py --tiny            # CPU only, a few minutes on 2 cores
    python benchmarks/hetero.py --json hetero.json          # GPU box: ~1B random Llama on cuda
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.` as a script too

from benchmarks.hetero_report import format_report, planner_prediction
from benchmarks.hetero_run import DeploymentRun, run_deployment

from prfaas.bench.data import BenchRequest
from prfaas.model.random_checkpoint import LLAMA_SIZES, write_random_llama

DEPLOYMENTS = ("prfaas", "homogeneous", "naive")
VOCAB_WORDS = tuple(f"{a}{b}" for a in "bcdfghklmnprstvz" for b in ("a", "e", "i", "o", "u", "y"))


@dataclass(frozen=True)
class Preset:
    model_size: str
    num_prompts: int
    median_len: int
    sigma: float
    max_len: int
    output_len: int
    link_gbps: float
    slo_ttft_s: float
    slo_tpot_ms: float
    # Every instance's KV pool: a decode instance reserves blocks for each request routed to
    # it, and one whose pool is full prefills the prompt itself, unseen by the fallback count.
    kv_cache_gb: float


PRESETS = {
    "tiny": Preset("tiny", 24, 120, 1.0, 1500, 8, 0.1, 5.0, 500.0, 1.0),
    # 8 GiB: ~131k tokens of float32 KV at 64 KiB per token, all 32 prompts at once with room.
    "1b": Preset("1b", 32, 512, 0.8, 3000, 32, 10.0, 10.0, 300.0, 8.0),
}


def workload(
    num_prompts: int, median: int, sigma: float, max_len: int, output_len: int, seed: int
) -> list[BenchRequest]:
    """Prompt lengths (words = tokens with the random checkpoint's tokenizer) log-normal around
    ``median``, clipped to [16, max_len]; words drawn at random, so no prefix is shared."""
    rng = random.Random(seed)
    out: list[BenchRequest] = []
    for _ in range(num_prompts):
        n = min(max_len, max(16, round(rng.lognormvariate(math.log(median), sigma))))
        words = " ".join(rng.choice(VOCAB_WORDS) for _ in range(n))
        out.append(BenchRequest(words, n, output_len))
    return out


def deploy_yaml(kind: str, a: argparse.Namespace, port: int, *, threads: int) -> dict[str, Any]:
    def inst(name: str, role: str, remote: bool = False) -> dict[str, Any]:
        n = 2 if remote and a.remote_device != "cpu" else threads
        return {"name": name, "role": role, "num_threads": n, "kv_cache_gb": a.kv_cache_gb}

    pd = {"name": "local", "kind": "pd", "device": "cpu", "dtype": a.dtype}
    remote = {"name": "remote", "kind": "prfaas", "device": a.remote_device, "dtype": a.dtype}
    remote["instances"] = [inst("prfaas-0", "prefill", remote=True)]
    link = {"src": "remote", "dst": "local", "rate_gbps": a.link_gbps, "rtt_ms": a.rtt_ms}
    if kind == "prfaas":
        pd["instances"] = [inst("pd-p-0", "prefill"), inst("pd-d-0", "decode")]
        clusters, links = [pd, remote], [link]
    elif kind == "homogeneous":
        pd["instances"] = [inst(f"pd-p-{i}", "prefill") for i in range(2)]
        pd["instances"].append(inst("pd-d-0", "decode"))
        clusters, links = [pd], []
    else:
        pd["instances"] = [inst(f"pd-d-{i}", "decode") for i in range(2)]
        clusters, links = [pd, remote], [link]
    return {
        "model": str(a.checkpoint),
        "port": port,
        "max_model_len": a.max_model_len,
        "clusters": clusters,
        "links": links,
        # Instance counts stay as deployed: no PD role conversions during the run.
        "policy": {"name": kind, "control": {"role_changes": False, "output_tokens": a.output_len}},
        "overload": {"max_inflight_per_decode": 256, "max_queued": 1024, "queue_ttl_s": 600},
        # The decode side awaits KV from dispatch on: a prompt queued behind others at a CPU
        # PD-P must not run out of time and be recomputed (a fallback, counted in the report).
        "kv_deadline_s": 600.0,
        "stream_stall_s": 660.0,  # must exceed kv_deadline_s: a first token may wait that long
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny random Llama, CPU-sized workload")
    p.add_argument("--remote-device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default="float32", help="every instance's (KV crosses devices)")
    p.add_argument("--checkpoint", type=Path, default=None, help="where the model is written")
    p.add_argument("--num-prompts", type=int, default=None)
    p.add_argument("--median-len", type=int, default=None, help="log-normal median, tokens")
    p.add_argument("--sigma", type=float, default=None, help="log-normal sigma")
    p.add_argument("--max-len", type=int, default=None, help="longest prompt, tokens")
    p.add_argument("--output-len", type=int, default=None)
    p.add_argument("--link-gbps", type=float, default=None, help="link emulator rate")
    p.add_argument("--rtt-ms", type=float, default=5.0)
    p.add_argument("--request-rate", type=float, default=math.inf, help="default: all at once")
    p.add_argument("--slo-ttft-s", type=float, default=None)
    p.add_argument("--slo-tpot-ms", type=float, default=None)
    p.add_argument("--kv-cache-gb", type=float, default=None, help="every instance's KV pool")
    p.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    p.add_argument("--log-dir", type=Path, default=None, help="serve logs (default: temp)")
    a = p.parse_args(argv)
    preset = PRESETS["tiny" if a.tiny else "1b"]
    for key, value in vars(preset).items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    if a.remote_device is None:
        import torch

        a.remote_device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.checkpoint is None:
        a.checkpoint = Path(tempfile.gettempdir()) / f"prfaas-random-llama-{a.model_size}"
    a.max_model_len = LLAMA_SIZES[a.model_size].max_position_embeddings
    if a.max_len + a.output_len >= a.max_model_len:
        p.error(f"--max-len {a.max_len} + output must fit in {a.max_model_len} tokens")
    unknown = set(a.deployments.split(",")) - set(DEPLOYMENTS)
    if unknown:
        p.error(f"unknown deployments {sorted(unknown)}; choose from {DEPLOYMENTS}")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    started = time.monotonic()
    size = LLAMA_SIZES[a.model_size]
    write_random_llama(a.checkpoint, size, VOCAB_WORDS, seed=a.seed)
    requests = workload(a.num_prompts, a.median_len, a.sigma, a.max_len, a.output_len, a.seed)
    cores = len(os.sched_getaffinity(0))  # the cores this process may use, not the host's
    threads = max(1, (cores - 1) // 3)
    log_dir = a.log_dir or Path(tempfile.mkdtemp(prefix="prfaas-hetero-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, DeploymentRun] = {}
    for kind in a.deployments.split(","):
        make_config = functools.partial(deploy_yaml, kind, a, threads=threads)
        runs[kind] = run_deployment(kind, make_config, requests, a, log_dir)
        r = runs[kind]
        print(
            f"[{time.monotonic() - started:.0f}s] {kind}: started in {r.start_s:.1f}s, served in "
            f"{r.report.duration_s:.1f}s, stopped in {r.stop_s:.1f}s",
            file=sys.stderr,
            flush=True,
        )
    report = {
        "setup": {
            "model": f"random Llama {a.model_size}, {size.num_params():,} parameters",
            "remote_device": a.remote_device,
            "dtype": a.dtype,
            "cpu_cores": cores,
            "threads_per_cpu_instance": threads,
            "kv_cache_gb_per_instance": a.kv_cache_gb,
            "num_prompts": a.num_prompts,
            "prompt_len": f"log-normal median {a.median_len} sigma {a.sigma}, [16, {a.max_len}]",
            "mean_prompt_len": sum(r.prompt_len for r in requests) / len(requests),
            "output_len": a.output_len,
            "request_rate": a.request_rate,
            "link_gbps": a.link_gbps,
            "rtt_ms": a.rtt_ms,
            "slo": {"ttft_s": a.slo_ttft_s, "tpot_ms": a.slo_tpot_ms},
            "wall_s": time.monotonic() - started,
        },
        "deployments": {k: r.to_json() for k, r in runs.items()},
        "planner": planner_prediction(runs, a.output_len, a.link_gbps),
    }
    print(format_report(report))
    if a.json is not None:
        a.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
