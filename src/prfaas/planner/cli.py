"""`prfaas plan` and `prfaas kv-throughput`: the planner's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prfaas.cli import Commands


def register(commands: Commands) -> None:
    plan = commands.top.add_parser(
        "plan",
        help="throughput model: best threshold t and P/D split per deployment",
        description="Solve the PrfaaS throughput model (paper eqs. 3-6) for every deployment "
        "in a YAML config and search t and the N_p/N_d split.",
    )
    plan.add_argument("--config", required=True, help="plan YAML (see examples/paper/)")
    plan.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    plan.add_argument("--plot", metavar="DIR", help="write PNGs of Λ_max vs t and vs N_p here")
    plan.set_defaults(handler=run_plan)

    kv = commands.top.add_parser(
        "kv-throughput",
        help="KV size, estimated prefill time and KV throughput Φ_kv per prompt length",
        description="S_kv(l) from the model config, T_prefill(l) from the calibrated "
        "efficiency model (default), the roofline with an explicit MFU, or measured times "
        "(--profile), and Φ_kv = S_kv / T_prefill (paper eq. 1); with --instances, the "
        "cluster egress of eq. 2. --calibration prints the efficiency model's errors.",
    )
    kv.add_argument("--model", help="preset name or path to a config.json")
    kv.add_argument("--gpu", help="GPU type from the catalog, e.g. h200")
    kv.add_argument("--gpus-per-instance", type=int, default=8)
    kv.add_argument("--lengths", default="1K,8K,32K,128K", help="comma-separated; K = 1024")
    kv.add_argument("--instances", type=int, help="prefill instances: report eq. 2 egress")
    kv.add_argument(
        "--estimate",
        choices=("efficiency", "roofline"),
        default="efficiency",
        help="T_prefill model when no --profile is given (default: efficiency)",
    )
    kv.add_argument("--mfu", type=float, default=0.4, help="roofline MFU (0, 1]")
    kv.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="measured T_prefill: .csv (num_tokens,prefill_s) or .json rows; "
        "see prfaas/planner/profile_file.py",
    )
    kv.add_argument(
        "--calibration",
        action="store_true",
        help="print the efficiency model's fit and held-out errors on published timings",
    )
    kv.add_argument("--json", action="store_true")
    kv.set_defaults(handler=run_kv_throughput)


def _fail(message: str) -> int:
    print(f"prfaas: error: {message}", file=sys.stderr)
    return 2


def run_plan(args: argparse.Namespace) -> int:
    from prfaas.planner.build import build_inputs, run_plans
    from prfaas.planner.config import PlanConfigError, load_plan_config
    from prfaas.planner.report import plan_table

    try:
        config = load_plan_config(args.config)
        inputs = build_inputs(config, base_dir=Path(args.config).parent)
        results = run_plans(inputs)
    except (PlanConfigError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    else:
        if config.description:
            print(config.description.strip() + "\n")
        print(plan_table(results))
    if args.plot:
        from prfaas.planner.plots import write_plots

        for path in write_plots(results, Path(args.plot)):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def run_kv_throughput(args: argparse.Namespace) -> int:
    from prfaas.planner.kv_throughput import kv_throughput_rows, print_kv_table
    from prfaas.planner.units import parse_tokens

    if args.calibration:
        from prfaas.planner.calibration import print_calibration

        print_calibration(as_json=args.json)
        return 0
    try:
        lengths = [parse_tokens(text) for text in args.lengths.split(",") if text.strip()]
        if not lengths or min(lengths) < 1:
            raise ValueError("--lengths needs positive token counts")
        if args.instances is not None and args.instances < 1:
            raise ValueError("--instances must be >= 1")
        if args.model is None or (args.gpu is None and args.profile is None):
            raise ValueError("--model and --gpu (or --profile FILE) are required")
        title, rows = kv_throughput_rows(
            args.model,
            lengths,
            gpu=args.gpu,
            gpus_per_instance=args.gpus_per_instance,
            estimate=args.estimate,
            mfu=args.mfu,
            profile_path=args.profile,
            instances=args.instances,
        )
    except (ValueError, KeyError, OSError) as exc:
        return _fail(str(exc).strip("'\""))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_kv_table(title, rows, args.instances)
    return 0
