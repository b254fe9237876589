"""One vLLM instance for the hand-off tests, run as a script in its own process.

    python vllm_instance.py SPEC.json

SPEC: {"model": folder, "kv_transfer_config": {...} | null, "ready": path, "go": path,
       "out": path, "jobs": [{"name", "prompt_token_ids", "max_tokens",
       "kv_transfer_params" | null, "cache_salt" | null}, ...]}

Starts the engine (fp32, eager, small), warms it up, touches ``ready``, waits (bounded)
for ``go``, runs the jobs one after another (greedy) and writes {name: {token_ids, text,
top2, seconds}} to ``out``. The ``__main__`` guard matters: vLLM starts its engine
processes with spawn.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ENGINE_ARGS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 512,
    "block_size": 32,  # the CPU backend's block sizes are multiples of 32
    "enforce_eager": True,
    "max_num_seqs": 4,
    "kv_cache_memory_bytes": 256 << 20,
    "seed": 0,
}
GO_TIMEOUT_S = 600.0
WARM_UP = list(range(5, 45))  # token ids in every vocabulary these tests use


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    kv = spec.get("kv_transfer_config")
    llm = LLM(
        model=spec["model"],
        kv_transfer_config=None if kv is None else KVTransferConfig(**kv),
        **ENGINE_ARGS,
    )
    # A fresh engine's first request with logprobs took 15 s here (the tiny model's next
    # ones: milliseconds): done before ``ready``, or a decode instance's first wait for KV
    # spends its load timeout on the prefill instance's warm-up. No transfer (no
    # kv_transfer_params), under a cache salt of its own (no job shares its blocks).
    warm_s = time.monotonic()
    llm.generate(
        [{"prompt_token_ids": WARM_UP, "cache_salt": "warm-up"}],
        SamplingParams(temperature=0.0, max_tokens=2, logprobs=2),
        use_tqdm=False,
    )
    print(f"warmed up in {time.monotonic() - warm_s:.1f}s", flush=True)
    Path(spec["ready"]).touch()
    end_s = time.monotonic() + GO_TIMEOUT_S
    while not Path(spec["go"]).exists():
        if time.monotonic() > end_s:
            raise SystemExit("no go signal")
        time.sleep(0.1)
    results: dict[str, Any] = {}
    for job in spec["jobs"]:
        extra = None
        if job.get("kv_transfer_params") is not None:
            extra = {"kv_transfer_params": job["kv_transfer_params"]}
        params = SamplingParams(
            temperature=0.0, max_tokens=job["max_tokens"], logprobs=2, extra_args=extra
        )
        prompt: dict[str, Any] = {"prompt_token_ids": job["prompt_token_ids"]}
        if job.get("cache_salt"):
            prompt["cache_salt"] = job["cache_salt"]
        started_s = time.monotonic()
        (output,) = llm.generate([prompt], params, use_tqdm=False)
        results[job["name"]] = {
            "token_ids": list(output.outputs[0].token_ids),
            "text": output.outputs[0].text,
            # per generated token: the two best (token id, logprob), best first
            "top2": [
                sorted(((t, lp.logprob) for t, lp in step.items()), key=lambda x: -x[1])[:2]
                for step in output.outputs[0].logprobs or []
            ],
            "seconds": time.monotonic() - started_s,
        }
    Path(spec["out"]).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
