"""KDA prefill throughput: chunked (WY) form versus the token-by-token recurrence.

    .venv/bin/python benchmarks/kda.py [--tokens 2048 8192] [--threads N]

Kimi Linear 48B shapes per layer (32 heads x 128, state 32 x 128 x 128 float32), one
sequence, float32 inputs, a non-zero initial state. Prints tokens/s (best of --repeats);
the recurrence runs on a prefix of --recurrent-tokens and is extrapolated (it is linear).
Gates decaying up to --max-step-decay nats per token; above ~1 a 64-token chunk leaves the
single-matmul range and the intra-chunk products take the recursive (exact) path.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from prfaas.model.kda import kda_chunked, kda_recurrent

NUM_HEADS = 32
HEAD_DIM = 128


def _inputs(num_tokens: int, max_step_decay: float, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (num_tokens, NUM_HEADS, HEAD_DIM)
    return {
        "q": torch.randn(shape, generator=gen),
        "k": torch.randn(shape, generator=gen),
        "v": torch.randn(shape, generator=gen),
        "g": -max_step_decay * torch.rand(shape, generator=gen),
        "beta": torch.rand((num_tokens, NUM_HEADS), generator=gen),
        "initial_state": torch.randn((NUM_HEADS, HEAD_DIM, HEAD_DIM), generator=gen),
    }


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(
    token_counts: list[int], recurrent_tokens: int, repeats: int, max_step_decay: float
) -> None:
    """Prints chunked and recurrent tokens/s for each prompt length."""
    print(
        f"threads={torch.get_num_threads()} heads={NUM_HEADS} head_dim={HEAD_DIM}"
        f" max_step_decay={max_step_decay}"
    )
    print(f"{'tokens':>8} {'chunked tok/s':>14} {'recurrent tok/s':>16} {'speedup':>8}")
    for num_tokens in token_counts:
        x = _inputs(num_tokens, max_step_decay)
        with torch.inference_mode():
            chunked_s = _best_seconds(lambda x=x: kda_chunked(**x), repeats)
            n = min(recurrent_tokens, num_tokens)
            head = {name: t[:n] if name != "initial_state" else t for name, t in x.items()}
            recurrent_s = _best_seconds(lambda h=head: kda_recurrent(**h), repeats) * num_tokens / n
        print(
            f"{num_tokens:>8} {num_tokens / chunked_s:>14.0f} {num_tokens / recurrent_s:>16.0f}"
            f" {recurrent_s / chunked_s:>7.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--recurrent-tokens", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-step-decay", type=float, default=0.5)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    bench(args.tokens, args.recurrent_tokens, args.repeats, args.max_step_decay)


if __name__ == "__main__":
    main()
