"""Engine benchmark: prfaas against vLLM's CPU engine and transformers on SmolLM2, one run.

    make setup-vllm    # once: vLLM in its own venv, .venv-vllm
    .venv/bin/python benchmarks/engine.py [--num-requests 64] [--threads 2] [--json]
        [--peers vllm,transformers] [--vllm-python .venv-vllm/bin/python]
        [--device cpu|cuda] [--dtype float32|bfloat16|float16]

vLLM runs in its own venv and process (``benchmarks/engine_vllm.py``), first, on the token ids
this script draws; prfaas and transformers then run here. Ratios are prfaas over each peer
(speed; for the prefill, the peer's seconds over prfaas's). The machine may be shared: only
the ratios of one run mean much. ``--device cuda`` runs prfaas and transformers on the GPU
(``benchmarks/engine_gpu.sh``; vLLM's CPU build is then no peer).

Workloads (fp32, CPU, ``--threads`` threads, the same seeded prompts for all):
- serving-like: N requests, prompt lengths 32-1024 and output lengths 16-256 drawn from a
  fixed seed; transformers runs static batches of 16 (left padding, each batch generating up
  to its longest output); prfaas gets all requests at once (continuous batching). Both
  ignore EOS so every request produces exactly its output length. vLLM gets all requests at
  once with the prfaas engine's limits (64 sequences, 2048 tokens a step), eager mode
  (``--vllm-compile`` for its torch.compile). Reported: generated tokens per second, counting
  each request's own output tokens only.
- batch-1 decode: a 32-token prompt, 128 new tokens, tokens/s after the first.
- prefill: one 2048-token prompt, seconds to the first token, the better of two runs (the
  first also builds each engine's kernels for 2048-row matmuls, which vLLM's start-up
  profiling run has already done for its own).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from prfaas import LLM, SamplingParams
from prfaas.config import DTYPES, default_cache_dir
from prfaas.model.loader import resolve_model_folder


def workload(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt_len = rng.randint(32, 1024)
        out.append(([rng.randrange(100, vocab) for _ in range(prompt_len)], rng.randint(16, 256)))
    return out


def serving_mix(num_requests: int, seed: int) -> list[tuple[list[int], int]]:
    """The seeded serving workload over the embedded default model's vocabulary."""
    folder = resolve_model_folder(None, default_cache_dir())
    vocab = int(json.loads((folder / "config.json").read_text())["vocab_size"])
    return workload(num_requests, seed, vocab)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a CUDA kernel launch returns before it ran)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Transformers:
    def __init__(self, folder: str, device: torch.device, dtype: torch.dtype) -> None:
        import transformers

        self.device = device
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
        torch.nn.Module.to(self.model, device)
        self.pad_id = 0

    def generate_batch(self, batch: list[tuple[list[int], int]]) -> None:
        width = max(len(p) for p, _ in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, _) in enumerate(batch):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        max_new = max(n for _, n in batch)
        with torch.inference_mode():
            self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        sync(self.device)

    def serving(self, reqs: list[tuple[list[int], int]], batch_size: int) -> None:
        for i in range(0, len(reqs), batch_size):
            self.generate_batch(reqs[i : i + batch_size])

    def measure(
        self, reqs: list[tuple[list[int], int]], decode: list[int], long: list[int]
    ) -> dict[str, float]:
        self.generate_batch(reqs[:2])  # warm-up
        out = {"hf_serving_tok_s": sum(n for _, n in reqs) / timed(lambda: self.serving(reqs, 16))}
        h1 = timed(lambda: self.generate_batch([(decode, 1)]))
        h129 = timed(lambda: self.generate_batch([(decode, 129)]))
        out["hf_decode_b1_tok_s"] = 128 / (h129 - h1)
        out["hf_prefill_2048_s"] = min(
            timed(lambda: self.generate_batch([(long, 1)])) for _ in range(PREFILL_RUNS)
        )
        return out


PREFILL_RUNS = 2  # the 2K prefill's figure is the best of these (the first warms the shapes)


def long_prompt() -> list[int]:
    """The prefill workload's 2048 token ids (seeded)."""
    return [random.Random(1).randrange(100, 49000) for _ in range(2048)]


def prfaas_llm(
    threads: int, kv_cache_gb: float, device: str = "cpu", dtype: str = "float32"
) -> LLM:
    """The prfaas engine with the limits every engine gets here (64 sequences, 2048 tokens a
    step)."""
    return LLM(
        None,
        num_threads=threads,
        kv_cache_memory_gb=kv_cache_gb,
        max_num_seqs=64,
        max_num_batched_tokens=2048,
        device=device,
        dtype=dtype,
    )


def warmed_prfaas(
    num_requests: int, threads: int = 2, kv_cache_gb: float = 0.5
) -> tuple[LLM, list[tuple[list[int], int]]]:
    """For the scripts in ``dev/``: the prfaas engine and the seeded serving mix of
    ``num_requests`` (at least 2), after a warm-up on two of them."""
    torch.set_num_threads(threads)
    reqs = serving_mix(max(num_requests, 2), 0)
    llm = prfaas_llm(threads, kv_cache_gb)
    prfaas_serving(llm, reqs[:2])
    return llm, reqs


def print_medians(times: dict[str, list[float]], what: str, tokens: int) -> None:
    """For the A/B scripts in ``dev/``: each variant's median seconds (and generated tokens
    per second for the serving mix) with its runs."""
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = f", {tokens / med:.1f} generated tok/s" if what == "serving" else ""
        print(f"{name}: median {med:.2f} s{rate} (runs {', '.join(f'{t:.2f}' for t in ts)})")


def run_workload(llm: LLM, what: str, reqs: list[tuple[list[int], int]]) -> float:
    """Seconds for one run of ``serving`` (the mix) or ``prefill`` (the 2K prompt), from an
    empty prefix cache (vLLM runs with prefix caching off: nothing carried into a run)."""
    llm.engine.kv.pool.reset_cache()
    if what == "serving":
        return timed(lambda: prfaas_serving(llm, reqs))
    prompt, one = long_prompt(), SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    return timed(lambda: llm.generate([prompt], one))


def prfaas_serving(llm: LLM, reqs: list[tuple[list[int], int]]) -> None:
    engine = llm.engine
    for prompt, n in reqs:
        engine.add_request(prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()


def run_vllm(
    python: str,
    threads: int,
    reqs: list[tuple[list[int], int]],
    decode: list[int],
    long: list[int],
    compile_: bool,
    kv_cache_gb: float,
) -> dict[str, float]:
    """vLLM's figures on the same token ids, from ``engine_vllm.py`` in vLLM's venv."""
    if not Path(python).exists():
        raise SystemExit(f"{python} not found: run `make setup-vllm` or pass --peers transformers")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"serving": reqs, "decode_prompt": decode, "long_prompt": long}, f)
    script = Path(__file__).with_name("engine_vllm.py")
    cmd = [
        python,
        str(script),
        f.name,
        "--threads",
        str(threads),
        "--kv-cache-gb",
        str(kv_cache_gb),
    ]
    cmd += ["--compile"] if compile_ else []
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-8000:])
        raise SystemExit(f"vLLM run failed (exit {done.returncode})")
    # vLLM logs to stdout too: the figures are the last line that is a JSON object.
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"vLLM run printed no figures: {done.stdout[-2000:]}")
    return dict(json.loads(lines[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--peers", default="vllm,transformers")
    ap.add_argument("--vllm-python", default=".venv-vllm/bin/python")
    ap.add_argument("--vllm-compile", action="store_true")
    ap.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV memory of each engine")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (prfaas and transformers)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = ap.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    if not set(peers) <= {"vllm", "transformers"}:
        raise SystemExit(f"--peers: vllm and/or transformers, not {args.peers!r}")
    if "vllm" in peers and (args.device != "cpu" or args.dtype != "float32"):
        raise SystemExit("the vLLM peer is its CPU build in float32: pass --peers transformers")
    torch.set_num_threads(args.threads)

    # vLLM runs first, before prfaas holds its KV memory (the two never run at once).
    reqs = serving_mix(args.num_requests, args.seed)
    useful = sum(n for _, n in reqs)
    decode_prompt = reqs[0][0][:32]
    long = long_prompt()

    results: dict[str, float] = {}
    if "vllm" in peers:
        results.update(
            run_vllm(
                args.vllm_python,
                args.threads,
                reqs,
                decode_prompt,
                long,
                args.vllm_compile,
                args.kv_cache_gb,
            )
        )
    llm = prfaas_llm(args.threads, args.kv_cache_gb, args.device, args.dtype)
    results.update(measure_prfaas(llm, reqs, decode_prompt))
    if "transformers" in peers:
        hf = Transformers(str(llm.engine.loaded.folder), llm.engine.device, llm.engine.dtype)
        results.update(hf.measure(reqs, decode_prompt, long))
    names = ["prfaas"] + [{"vllm": "vllm", "transformers": "hf"}[p] for p in peers]
    for peer in names[1:]:
        results[f"serving_ratio_{peer}"] = (
            results["prfaas_serving_tok_s"] / results[f"{peer}_serving_tok_s"]
        )
        results[f"decode_b1_ratio_{peer}"] = (
            results["prfaas_decode_b1_tok_s"] / results[f"{peer}_decode_b1_tok_s"]
        )
        results[f"prefill_ratio_{peer}"] = (
            results[f"{peer}_prefill_2048_s"] / results["prfaas_prefill_2048_s"]
        )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    where = "CPU" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    print(
        f"SmolLM2-135M {args.dtype}, {where}, {args.threads} threads, "
        f"{args.num_requests} requests, {useful} generated tokens; "
        "ratio = prfaas / peer (prefill: peer s / prfaas s)"
    )
    print(
        f"{'workload':<32}"
        + "".join(f"{n:>10}" for n in names)
        + "".join(f"{'/' + n:>9}" for n in names[1:])
    )
    for key, label, fmt in (
        ("serving_tok_s", "serving-like (generated tok/s)", ".1f"),
        ("decode_b1_tok_s", "batch-1 decode (tok/s)", ".1f"),
        ("prefill_2048_s", "2048-token prefill (s)", ".2f"),
    ):
        ratio = key.replace("_tok_s", "_ratio").replace("_2048_s", "_ratio")
        print(
            f"{label:<32}"
            + "".join(f"{results[f'{n}_{key}']:>10{fmt}}" for n in names)
            + "".join(f"{results[f'{ratio}_{n}']:>8.2f}x" for n in names[1:])
        )


def measure_prfaas(
    llm: LLM, reqs: list[tuple[list[int], int]], decode: list[int]
) -> dict[str, float]:
    useful = sum(n for _, n in reqs)
    prfaas_serving(llm, reqs[:2])  # warm-up
    out = {"prfaas_serving_tok_s": useful / run_workload(llm, "serving", reqs)}
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    many = SamplingParams(max_tokens=129, temperature=0, ignore_eos=True)
    t1 = timed(lambda: llm.generate([decode], one))
    t129 = timed(lambda: llm.generate([decode], many))
    out["prfaas_decode_b1_tok_s"] = 128 / (t129 - t1)
    prefills = [run_workload(llm, "prefill", reqs) for _ in range(PREFILL_RUNS)]
    out["prfaas_prefill_2048_s"] = min(prefills)
    return out


if __name__ == "__main__":
    main()
