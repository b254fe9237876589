"""The `prfaas` command line: one dispatcher, each command defined beside the code it drives.

Each module in ``COMMAND_MODULES`` exposes ``register(commands: Commands) -> None`` and adds
its parsers with ``set_defaults(handler=...)``; a handler takes the parsed namespace and
returns an exit code. Command modules import heavy dependencies (torch) inside handlers
only, so that `prfaas plan` starts fast and runs without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

COMMAND_MODULES: tuple[str, ...] = (
    "prfaas.engine.cli",
    "prfaas.planner.cli",
    "prfaas.sim.cli",
    "prfaas.deploy.cli",
    "prfaas.deploy.rollout_cli",
    "prfaas.bench.cli",
    "prfaas.transfer.cli",
)

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Commands:
    """Where command modules attach their sub-parsers: top level, and under `prfaas bench`."""

    top: argparse._SubParsersAction[argparse.ArgumentParser]
    bench: argparse._SubParsersAction[argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prfaas", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench_parser = top.add_parser("bench", help="benchmarks: transfer, serve")
    bench = bench_parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    commands = Commands(top=top, bench=bench)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
