"""`prfaas bench serve`: load-test an OpenAI-compatible endpoint (see ``bench``)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prfaas.cli import Commands


def register(commands: Commands) -> None:
    p = commands.bench.add_parser("serve", help="load-test a serving endpoint (like vllm bench)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="model name (default: the server's)")
    p.add_argument("--api-key", default=None, help="API key (default: $OPENAI_API_KEY)")
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument(
        "--request-rate", type=float, default=float("inf"), help="requests/s (default: all at once)"
    )
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument(
        "--dataset",
        nargs="+",
        default=["random"],
        metavar="DATASET",
        help="random (default), or: trace FILE (Mooncake format)",
    )
    p.add_argument("--input-len", type=int, default=256, help="random: prompt words")
    p.add_argument("--output-len", type=int, default=64, help="random: output tokens")
    p.add_argument("--range-ratio", type=float, default=0.0, help="random: length spread")
    p.add_argument("--length-scale", type=float, default=1.0, help="trace: scale lengths")
    p.add_argument("--time-scale", type=float, default=1.0, help="trace: scale arrival times")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_bench_serve)


def _bench_serve(args: argparse.Namespace) -> int:
    from prfaas.bench.data import random_dataset, trace_dataset
    from prfaas.bench.load import run_bench

    kind, *rest = args.dataset
    if kind == "random" and not rest:
        requests = random_dataset(
            args.num_prompts, args.input_len, args.output_len, args.range_ratio, args.seed
        )
    elif kind == "trace" and len(rest) == 1 and Path(rest[0]).is_file():
        requests = trace_dataset(
            Path(rest[0]), args.num_prompts, args.length_scale, args.time_scale
        )
    else:
        print(
            "prfaas bench serve: --dataset random | trace FILE (an existing file)", file=sys.stderr
        )
        return 2
    report = asyncio.run(
        run_bench(
            args.base_url,
            requests,
            request_rate=args.request_rate,
            max_concurrency=args.max_concurrency,
            model=args.model,
            api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
            seed=args.seed,
        )
    )
    print(report.to_json() if args.json else report.format())
    return 0 if report.completed else 1
