"""The kv index's per-request lookup and per-heartbeat batch: in process vs a Redis server.

    .venv/bin/python benchmarks/kv_index_redis.py --url redis://127.0.0.1:6379/0 [--calls 2000]
        [--hybrid]

Eight prefill instances hold nested prefixes (32, 64, …, 256 blocks) of one 256-block chain
(a 4K-token prompt at 16-token blocks). Timed: ``prefix_blocks`` on the full chain (a hit
that walks all 256 blocks), on a chain whose first block misses, and ``apply`` of an
8-event batch. Reports the median and P99 per call in µs; the Redis figures include the
round trip, so run it on a quiet machine with the server on localhost or the real network.
Keys go under a fresh prefix; the instances are removed at the end (their counter key stays).
``--hybrid``: the instances are hybrid, with a state snapshot every 16 blocks (256 tokens)
and at the end of their prefix, so a hit is also cut back to a snapshot.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from prfaas.router.kv_index import CacheEvent, KvIndex, KvIndexBackend
from prfaas.router.redis_index import RedisKvIndex


def timed(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * (len(samples) - 1))]


def measure(index: KvIndexBackend, calls: int, hybrid: bool) -> dict[str, tuple[float, float]]:
    chain = [os.urandom(16) for _ in range(256)]
    for i in range(8):
        index.register(f"p{i}", "pd", 1, hybrid)
        held = chain[: 32 * (i + 1)]
        events: list[CacheEvent] = [(h, True) for h in held]
        if hybrid:
            events += [(h, True, True) for h in [*held[15::16], held[-1]]]
        index.apply(f"p{i}", 1, 1, events)
    assert index.prefix_blocks(chain)["p7"] == 256
    miss = [os.urandom(16), *chain[1:]]
    seq = iter(range(2, 10**9))
    return {
        "prefix_blocks hit (256 blocks)": timed(lambda: index.prefix_blocks(chain), calls),
        "prefix_blocks miss": timed(lambda: index.prefix_blocks(miss), calls),
        "apply (8 events)": timed(
            lambda: index.apply("p0", 1, next(seq), [(os.urandom(16), True)] * 8), calls
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--hybrid", action="store_true")
    args = parser.parse_args()
    prefix = f"bench-{os.getpid()}"
    redis_index = RedisKvIndex(args.url, prefix)
    redis_index.check()
    try:
        for name, index in [("memory", KvIndex()), ("redis", redis_index)]:
            for what, (p50, p99) in measure(index, args.calls, args.hybrid).items():
                print(f"{name:7s} {what:32s} median {p50:8.1f} µs   P99 {p99:8.1f} µs")
    finally:
        for i in range(8):
            redis_index.remove(f"p{i}")
        redis_index.close()


if __name__ == "__main__":
    main()
