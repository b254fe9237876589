"""`prfaas plan` and `prfaas kv-throughput`: the planner's command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
        description="S_kv(l) from the model config, T_prefill(l) from a roofline estimate with "
        "an explicit MFU, and Φ_kv = S_kv / T_prefill (paper eq. 1); with --instances, the "
        "cluster egress of eq. 2.",
    )
    kv.add_argument("--model", required=True, help="preset name or path to a config.json")
    kv.add_argument("--gpu", required=True, help="GPU type from the catalog, e.g. h200")
    kv.add_argument("--gpus-per-instance", type=int, default=8)
    kv.add_argument("--lengths", default="1K,8K,32K,128K", help="comma-separated; K = 1024")
    kv.add_argument("--instances", type=int, help="prefill instances: report eq. 2 egress")
    kv.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization (0, 1]")
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
    from prfaas.planner.hardware import get_gpu
    from prfaas.planner.model import load_planner_model
    from prfaas.planner.report import format_table
    from prfaas.planner.roofline import Instance, prefill_s
    from prfaas.planner.units import MIB, bytes_per_s_to_gbps, parse_tokens

    try:
        lengths = [parse_tokens(text) for text in args.lengths.split(",") if text.strip()]
        if not lengths or min(lengths) < 1:
            raise ValueError("--lengths needs positive token counts")
        if args.instances is not None and args.instances < 1:
            raise ValueError("--instances must be >= 1")
        model = load_planner_model(args.model)
        instance = Instance(get_gpu(args.gpu), args.gpus_per_instance, mfu=args.mfu)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        return _fail(str(exc).strip("'\""))
    rows: list[dict[str, Any]] = []
    for num_tokens in lengths:
        kv_bytes = model.kv_bytes(num_tokens)
        time_s = prefill_s(model, instance, num_tokens)
        row: dict[str, Any] = {
            "num_tokens": num_tokens,
            "kv_bytes": kv_bytes,
            "kv_mib": kv_bytes / MIB,
            "prefill_s": time_s,
            "kv_throughput_gbps": bytes_per_s_to_gbps(kv_bytes / time_s),
        }
        if args.instances is not None:
            row["cluster_egress_gbps"] = args.instances * row["kv_throughput_gbps"]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ["length", "S_kv (MiB)", "T_prefill (s)", "Φ_kv (Gbps)"]
    if args.instances is not None:
        headers.append(f"egress x{args.instances} (Gbps)")
    table_rows = []
    for row in rows:
        cells = [
            str(row["num_tokens"]),
            f"{row['kv_mib']:.1f}",
            f"{row['prefill_s']:.3f}",
            f"{row['kv_throughput_gbps']:.2f}",
        ]
        if args.instances is not None:
            cells.append(f"{row['cluster_egress_gbps']:.1f}")
        table_rows.append(cells)
    print(
        f"{model.name} on {args.gpus_per_instance}x{args.gpu} "
        f"(roofline estimate, MFU {args.mfu:g}; a measured profile overrides it)"
    )
    print(format_table(headers, table_rows))
    return 0
