"""Smoke check of the vLLM install: greedy generation from the embedded default model.

    make smoke-vllm        # = .venv-vllm/bin/python examples/vllm_generate.py

prfaas converts its embedded SmolLM2-135M-Instruct GGUF into a Hugging Face folder (cached
under ~/.cache/prfaas/gguf); vLLM's CPU engine serves that folder in float32.
"""

from __future__ import annotations

import time

from prfaas.config import default_cache_dir
from prfaas.model.loader import resolve_model_folder

PROMPT = "The capital of France is"


def main() -> None:
    from vllm import LLM, SamplingParams

    folder = resolve_model_folder(None, default_cache_dir())
    started_s = time.monotonic()
    llm = LLM(
        model=str(folder),
        dtype="float32",
        max_model_len=512,
        block_size=32,  # the CPU backend's block sizes are multiples of 32
        enforce_eager=True,
        kv_cache_memory_bytes=256 << 20,
    )
    ready_s = time.monotonic()
    (output,) = llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=16))
    text = output.outputs[0].text
    print(
        f"engine ready in {ready_s - started_s:.1f}s, 16 tokens in "
        f"{time.monotonic() - ready_s:.2f}s: {PROMPT!r} -> {text!r}"
    )
    if not text.strip():
        raise SystemExit("vLLM generated nothing")


if __name__ == "__main__":  # vLLM starts its engine processes with spawn
    main()
