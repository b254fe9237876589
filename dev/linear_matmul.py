"""F.linear (MKL sgemm) against oneDNN with the weight reordered once (``model.layers.Linear``)
on SmolLM2's MLP shapes: best of N wall times per matmul, both in one process.

    .venv/bin/python dev/linear_matmul.py [--threads 1] [--reps 25]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from prfaas.model.layers import Linear


def best_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'in':>5} {'out':>5} {'rows':>5} {'F.linear ms':>12} {'oneDNN ms':>10}")
    for k, n in ((576, 3072), (1536, 576)):
        layer = Linear(k, n, bias=False)  # made outside inference mode: packable
        with torch.inference_mode():
            for rows in (1, 24, 64, 256, 2048):
                x = torch.randn(rows, k)
                base = best_ms(lambda: F.linear(x, layer.weight), args.reps)  # noqa: B023
                packed = best_ms(lambda: layer(x), args.reps)  # noqa: B023
                print(f"{k:>5} {n:>5} {rows:>5} {base:>12.3f} {packed:>10.3f}")


if __name__ == "__main__":
    main()
