"""Run `prfaas simulate` through its own parser, independent of COMMAND_MODULES."""

import argparse
from collections.abc import Sequence

from prfaas.cli import Commands
from prfaas.sim.cli import register


def run_cli(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="prfaas")
    top = parser.add_subparsers(dest="command")
    bench = top.add_parser("bench").add_subparsers(dest="bench_command")
    register(Commands(top=top, bench=bench))
    args = parser.parse_args(list(argv))
    return int(args.handler(args))
