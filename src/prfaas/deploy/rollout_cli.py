"""`prfaas rollout`: show a deployment's model versions, or shift a served model's new
sessions between its two versions (``POST /admin/rollout``, the cluster token)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prfaas.cli import Commands


def register(commands: Commands) -> None:
    r = commands.top.add_parser(
        "rollout", help="blue-green: show model versions, or shift traffic between two"
    )
    r.add_argument("--url", default="http://127.0.0.1:8000")
    r.add_argument("--model", default=None, help="the served model name")
    r.add_argument(
        "--weight",
        default=None,
        metavar="VERSION=PERCENT",
        help="give VERSION this percent of the model's new sessions, the other the rest",
    )
    r.add_argument(
        "--token", default=None, help="the cluster token (default: $PRFAAS_CLUSTER_TOKEN)"
    )
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=_rollout)


def parse_weight(value: str) -> tuple[str, float]:
    """``VERSION=PERCENT`` -> (version, percent); ``ValueError`` naming the problem."""
    version, sep, percent = value.partition("=")
    if not sep or not version:
        raise ValueError(f"--weight {value!r}: expected VERSION=PERCENT, e.g. green=25")
    number = float(percent.rstrip("%"))
    if not 0 <= number <= 100:
        raise ValueError(f"--weight {value!r}: the percent must be within 0..100")
    return version, number


def _rollout(args: argparse.Namespace) -> int:
    from prfaas.deploy.admin_client import admin_call

    if (args.model is None) != (args.weight is None):
        print("prfaas rollout: --model and --weight go together", file=sys.stderr)
        return 2
    body = None
    if args.weight is not None:
        try:
            version, percent = parse_weight(args.weight)
        except ValueError as e:
            print(f"prfaas rollout: {e}", file=sys.stderr)
            return 2
        body = {"model": args.model, "version": version, "weight": percent}
    data = admin_call("rollout", args.url, "/admin/rollout", args.token, timeout_s=10.0, body=body)
    if isinstance(data, int):
        return data
    if args.json:
        print(json.dumps(data, indent=2))
    elif "weights" in data:
        shown = ", ".join(f"{v} {w:g}%" for v, w in data["weights"].items())
        print(f"{data['model']}: {shown}")
    else:
        print(f"{'model':<24}{'version':<12}{'weight':>8}{'held':>6}  drained  instances")
        for v in data["versions"]:
            names = ", ".join(i["name"] for i in v["instances"])
            print(
                f"{v['model']:<24}{v['version']:<12}{v['weight']:>7g}%{v['held']:>6}  "
                f"{v['drained']!s:<8} {names}"
            )
    return 0
