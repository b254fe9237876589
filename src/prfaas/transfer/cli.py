"""Commands of the transport: `prfaas certs`, `prfaas link-emulator`, `prfaas bench transfer`.

Also runnable alone (`python -m prfaas.transfer.cli ...`), which the loopback benchmark uses
to start its receiver process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from prfaas.cli import Commands


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


def _stall(text: str) -> tuple[float, float]:
    at_s, sep, duration_s = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected AT_S:DURATION_S, got {text!r}")
    return float(at_s), float(duration_s)


def register(commands: Commands) -> None:
    certs = commands.top.add_parser(
        "certs",
        help="a CA and one bundle per cluster and for the gateways (key, certificate, CA "
        "certificate); copy each machine only its bundle, keep ca.key off them",
    )
    certs.add_argument("--out", type=Path, required=True, help="directory to write into")
    certs.add_argument(
        "--clusters",
        default="prfaas,pd",
        help="comma-separated cluster names (default %(default)s)",
    )
    certs.set_defaults(handler=run_certs)

    emu = commands.top.add_parser("link-emulator", help="TCP relay emulating a WAN link")
    emu.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    emu.add_argument("--connect", type=_address, required=True, metavar="HOST:PORT")
    emu.add_argument("--rate-gbps", type=float, default=None, help="cap per direction")
    emu.add_argument("--rtt-ms", type=float, default=0.0)
    emu.add_argument("--jitter-ms", type=float, default=0.0)
    emu.add_argument("--stall", type=_stall, action="append", default=[], metavar="AT_S:DUR_S")
    emu.add_argument("--cut-at", type=float, action="append", default=[], metavar="AT_S")
    emu.add_argument("--cut-after-mb", type=float, default=None)
    emu.set_defaults(handler=run_link_emulator)

    bench = commands.bench.add_parser("transfer", help="KV transfer goodput (sender/receiver)")
    role = bench.add_mutually_exclusive_group()
    role.add_argument("--listen", type=_address, metavar="HOST:PORT", help="be the receiver")
    role.add_argument("--connect", type=_address, metavar="HOST:PORT", help="be the sender")
    bench.add_argument("--size-mb", type=int, default=512)
    bench.add_argument("--codec", default="raw", help="raw|int8|fp8 [+zstd|+lz4]")
    bench.add_argument("--connections", type=int, default=4)
    bench.add_argument("--tls", action="store_true", help="mutual TLS 1.3 (needs --certs)")
    bench.add_argument("--certs", type=Path, default=None, help="dir from `prfaas certs`")
    bench.add_argument("--rate-gbps", type=float, default=None, help="sender egress cap")
    bench.add_argument("--count", type=int, default=None, help="receiver: exit after N")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.set_defaults(handler=run_bench_transfer)


def run_certs(args: argparse.Namespace) -> int:
    from prfaas.transfer.tls import write_certs

    clusters = [name.strip() for name in args.clusters.split(",") if name.strip()]
    try:
        written = write_certs(args.out, clusters)
    except ValueError as e:
        print(f"prfaas certs: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(
        f"copy each machine only its bundle(s) (e.g. {args.out / clusters[0]}); keep "
        f"{args.out / 'ca.key'} where certificates are made (it signs bundles added later)",
        file=sys.stderr,
    )
    return 0


def run_link_emulator(args: argparse.Namespace) -> int:
    from prfaas.transfer.emulator import EmulatorConfig, LinkEmulator

    cut_after = None if args.cut_after_mb is None else int(args.cut_after_mb * 2**20)
    config = EmulatorConfig(
        listen=args.listen,
        target=args.connect,
        rate_gbps=args.rate_gbps,
        rtt_ms=args.rtt_ms,
        jitter_ms=args.jitter_ms,
        stalls=tuple(args.stall),
        cuts_at_s=tuple(args.cut_at),
        cut_after_bytes=cut_after,
    )
    with LinkEmulator(config) as emulator:
        host, port = emulator.address
        print(f"relaying {host}:{port} -> {args.connect[0]}:{args.connect[1]}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


def run_bench_transfer(args: argparse.Namespace) -> int:
    from prfaas.transfer import bench

    if args.tls and args.certs is None and (args.listen or args.connect):
        print("--tls with --listen/--connect needs --certs DIR", file=sys.stderr)
        return 2
    certs = args.certs if args.tls or args.listen else None
    if args.listen:
        return bench.serve(args.listen[0], args.listen[1], certs, args.count, args.json)
    if args.connect:
        result = bench.send_once(
            args.connect, args.size_mb, args.codec, args.connections, certs, args.rate_gbps
        )
    else:
        result = bench.run_loopback(
            args.size_mb, args.codec, args.connections, args.tls, args.rate_gbps
        )
    print(json.dumps(result.to_json()) if args.json else result.describe())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prfaas-transfer")
    parser.add_argument("--log-level", default="WARNING")
    top = parser.add_subparsers(dest="command")
    bench = top.add_parser("bench").add_subparsers(dest="bench_command")
    register(Commands(top=top, bench=bench))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
