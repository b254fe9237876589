"""Sampler cost per step: N rows of a 49,152-token vocabulary (SmolLM2's), per settings mix.

    .venv/bin/python benchmarks/sampler.py [--rows 1 32 128] [--prompt-tokens 1000]
                                           [--repeats 5] [--threads N]

Each row has a --prompt-tokens prompt and 200 output tokens (what the penalties read). Prints
milliseconds per ``sample()`` call (best of --repeats); the model's forward is not included.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch

from prfaas.engine.sampler import sample
from prfaas.engine.sampling_params import SamplingParams

VOCAB = 49152
MIXES = {
    "greedy": SamplingParams(temperature=0.0),
    "top-p, seeded": SamplingParams(temperature=0.8, top_p=0.9, seed=1),
    "top-p + penalties": SamplingParams(
        temperature=0.8,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        repetition_penalty=1.1,
    ),
    "greedy + logprobs=5": SamplingParams(temperature=0.0, logprobs=5),
}


@dataclass
class _Row:
    params: SamplingParams
    prompt_token_ids: list[int]
    output_token_ids: list[int] = field(default_factory=lambda: list(range(200)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--prompt-tokens", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prompt = [t % VOCAB for t in range(args.prompt_tokens)]
    logits = torch.randn(max(args.rows), VOCAB, generator=torch.Generator().manual_seed(0))
    print(f"threads={torch.get_num_threads()} vocab={VOCAB}")
    for num_rows in args.rows:
        for name, params in MIXES.items():
            rows = [_Row(params, prompt) for _ in range(num_rows)]
            batch = logits[:num_rows]
            sample(batch, rows)
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                sample(batch, rows)
                best = min(best, time.perf_counter() - start)
            print(f"rows={num_rows:4d}  {name:22s} {best * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
