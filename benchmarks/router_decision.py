"""Routing-decision latency with a large kv index (issue 6 goal: P99 <= 100 µs at 100K blocks).

    .venv/bin/python benchmarks/router_decision.py [--blocks 100000] [--decisions 20000]
        [--hybrid] [--json]

A fleet of 4 PrfaaS prefill, 3 PD-P and 5 PD-D instances; the kv index holds ``--blocks``
16-byte block hashes spread over the prefill instances in chains of 64 blocks (shared
prefixes, as a prefix cache holds them). Each decision routes a request whose hash chain
(up to 256 blocks: a 128K prompt at 512-token blocks) shares a random cached prefix, then
diverges. Timed: ``Router.route`` alone (the fleet view is built by the caller and reused).
``--hybrid``: the prefill instances are hybrid (Kimi Linear), holding a state snapshot every
``SNAPSHOT_EVERY`` blocks and at each chain's end, so every hit is cut back to a snapshot.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Sequence

from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import PrfaasThreshold
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import ClusterView, InstanceView, RouteRequest, RouterState

CHAIN = 64
SNAPSHOT_EVERY = 8
GOAL_US = 100.0


class BenchFleet:
    def __init__(self) -> None:
        self.views = [InstanceView(f"r{k}", "remote", "prefill", k % 3) for k in range(4)]
        self.views += [InstanceView(f"p{k}", "pd", "prefill", k % 2) for k in range(3)]
        self.views += [InstanceView(f"d{k}", "pd", "decode", k) for k in range(5)]
        self.cluster_views = [ClusterView("pd", "pd"), ClusterView("remote", "prfaas")]

    def clusters(self) -> Sequence[ClusterView]:
        return self.cluster_views

    def instances(self) -> Sequence[InstanceView]:
        return self.views


def h(*parts: int) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--hybrid", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = random.Random(0)
    fleet = BenchFleet()
    index = KvIndex()
    prefill = [v for v in fleet.views if v.role == "prefill"]
    for v in prefill:
        index.register(v.name, v.cluster, hybrid=args.hybrid)
    chains = [[h(c, i) for i in range(CHAIN)] for c in range(args.blocks // CHAIN)]
    for c, chain in enumerate(chains):
        name = prefill[c % len(prefill)].name
        index.stored(name, 0, chain)
        if args.hybrid:
            ends = [*chain[SNAPSHOT_EVERY - 1 :: SNAPSHOT_EVERY], chain[-1]]
            index.apply(name, 0, c + 1, [(e, True, True) for e in ends])
    router = Router(RouterConfig(512), PrfaasThreshold(), fleet, index, RouterState(19_400))
    requests = []
    for k in range(args.decisions):
        chain = rng.choice(chains)
        shared = rng.randrange(1, CHAIN + 1)
        length = rng.randrange(shared + 1, 257)
        hashes = chain[:shared] + [h(-k, i) for i in range(length - shared)]
        requests.append(RouteRequest(f"q{k}", "t", length * 512, tuple(hashes)))
    times_us = []
    for request in requests:
        start = time.perf_counter_ns()
        router.route(request)
        times_us.append((time.perf_counter_ns() - start) / 1000)
    times_us.sort()
    row = {
        "indexed_blocks": len(index),
        "hybrid": args.hybrid,
        "decisions": len(times_us),
        "p50_us": times_us[len(times_us) // 2],
        "p99_us": times_us[int(len(times_us) * 0.99)],
        "max_us": times_us[-1],
        "goal_p99_us": GOAL_US,
    }
    row["met"] = row["p99_us"] <= GOAL_US
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(
            f"{row['indexed_blocks']} indexed blocks, {row['decisions']} decisions: "
            f"P50 {row['p50_us']:.1f} µs, P99 {row['p99_us']:.1f} µs, max {row['max_us']:.0f} µs "
            f"(goal P99 <= {GOAL_US:.0f} µs: {'met' if row['met'] else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
