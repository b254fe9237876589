"""`prfaas serve`, `prfaas worker` and `prfaas status`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prfaas.cli import Commands


def register(commands: Commands) -> None:
    p = commands.top.add_parser("serve", help="run a deployment: gateway, workers, links")
    p.add_argument("--config", type=Path, help="deploy.yaml (default: the embedded default)")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default 8000)")
    p.add_argument("--model", default=None, help="HF folder or .gguf (default: embedded)")
    p.add_argument("--threshold", type=int, default=None, help="pin the routing threshold t")
    p.add_argument("--api-key", action="append", default=[], metavar="KEY[=TENANT]")
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="KEY=TENANT lines (# comments); keeps keys out of ps and shell history",
    )
    p.add_argument("--no-auth", action="store_true", help="allow no keys on a public address")
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument(
        "--engine",
        choices=["reference", "vllm"],
        default=None,
        help="the engine of instances whose config names none (vllm: in the vLLM venv)",
    )
    p.add_argument("--log-dir", type=Path, default=None, help="worker logs (default: temp)")
    p.add_argument("--audit-log", type=Path, default=None, help="append audit JSON lines here")
    p.add_argument("--usage-log", type=Path, default=None, help="append usage JSON lines here")
    p.set_defaults(handler=_serve)

    w = commands.top.add_parser("worker", help="run one engine worker (prefill or decode)")
    w.add_argument("--name", required=True)
    w.add_argument("--role", choices=["prefill", "decode"], required=True)
    w.add_argument("--cluster", required=True)
    w.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="control HTTP(S) listener; port 0: a free one, announced when registering",
    )
    w.add_argument(
        "--kv-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="KV receiver; port 0 (default): a free one, announced when registering",
    )
    w.add_argument(
        "--gateway",
        action="append",
        required=True,
        metavar="URL[,URL…]",
        help="a gateway to register with; repeat or comma-separate for several",
    )
    w.add_argument("--model", default=None)
    w.add_argument(
        "--certs",
        type=Path,
        default=None,
        help="this cluster's bundle from `prfaas certs` (mutual TLS: KV and control plane)",
    )
    w.add_argument(
        "--insecure",
        action="store_true",
        help="plain HTTP to and from the gateway (logged as INSECURE); KV keeps --certs",
    )
    w.add_argument("--link-rate", action="append", default=[], metavar="LINK=GBPS")
    w.add_argument("--max-model-len", type=int, default=None)
    w.add_argument("--num-threads", type=int, default=None)
    w.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    w.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    w.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV pool memory (GiB)")
    w.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="tokens per KV block (reference engine; every instance of a fleet uses the same)",
    )
    w.add_argument("--parent-pid", type=int, default=None, help="exit when it exits")
    w.add_argument(
        "--engine",
        choices=["reference", "vllm"],
        default="reference",
        help="the engine this instance runs (vllm: in the vLLM venv, `make setup-vllm`)",
    )
    w.set_defaults(handler=_worker)

    s = commands.top.add_parser("status", help="show a running deployment")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("--json", action="store_true")
    s.add_argument(
        "--token",
        default=None,
        help="the admin key a non-loopback gateway asks for (default: $PRFAAS_CLUSTER_TOKEN)",
    )
    s.set_defaults(handler=_status)

    c = commands.top.add_parser(
        "canary", help="run a canary round now: every path against its reference"
    )
    c.add_argument("--url", default="http://127.0.0.1:8000")
    c.add_argument("--json", action="store_true")
    c.add_argument(
        "--token", default=None, help="the cluster token (default: $PRFAAS_CLUSTER_TOKEN)"
    )
    c.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the round")
    c.set_defaults(handler=_canary)


VLLM_MISSING = "vLLM is not installed here: run it from .venv-vllm (make setup-vllm; docs/vllm.md)"


def _vllm_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is None


def _split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def _worker(args: argparse.Namespace) -> int:
    import uvicorn

    from prfaas.config import CLUSTER_TOKEN_ENV, EngineConfig, cluster_token_from_env
    from prfaas.deploy.launcher import listen_socket
    from prfaas.worker import Worker, WorkerConfig, create_worker_app

    if args.engine == "vllm" and _vllm_missing():
        print(f"prfaas worker: --engine vllm: {VLLM_MISSING}", file=sys.stderr)
        return 2
    token = cluster_token_from_env()
    if not token:
        print(f"prfaas worker: set {CLUSTER_TOKEN_ENV} to the cluster token", file=sys.stderr)
        return 2
    if args.certs is None and not args.insecure:
        print(
            "prfaas worker: pass --certs (this cluster's bundle from `prfaas certs`), or "
            "--insecure for a plain-HTTP control plane",
            file=sys.stderr,
        )
        return 2
    host, port = _split_host_port(args.listen)
    kv_host, kv_port = _split_host_port(args.kv_listen)
    # Bound now, before the engine loads, and served from this socket: the port registered
    # is the one held. With port 0 the kernel picks a free one, so no other process can take
    # it between a choice and the bind (`prfaas serve` spawns its workers so).
    try:
        listener = listen_socket(host, port)
    except OSError as e:
        print(f"prfaas worker: --listen {args.listen}: {e}", file=sys.stderr)
        return 2
    port = listener.getsockname()[1]
    rates = {k: float(v) for k, _, v in (r.partition("=") for r in args.link_rate)}
    try:
        engine = EngineConfig(
            model=args.model,
            device=args.device,
            dtype=args.dtype,
            max_model_len=args.max_model_len,
            num_threads=args.num_threads,
            kv_cache_memory_gb=args.kv_cache_gb,
            **({} if args.block_size is None else {"block_size": args.block_size}),
        )
    except ValueError as e:
        print(f"prfaas worker: {e}", file=sys.stderr)
        return 2
    config = WorkerConfig(
        name=args.name,
        cluster=args.cluster,
        role=args.role,
        host=host,
        port=port,
        gateway_urls=tuple(dict.fromkeys(u for arg in args.gateway for u in arg.split(",") if u)),
        cluster_token=token,
        kv_host=kv_host,
        kv_port=kv_port,
        certs_dir=args.certs,
        insecure_control=args.insecure,
        link_rate_gbps=rates,
        engine=engine,
        parent_pid=args.parent_pid,
        engine_kind=args.engine,
    )
    try:
        worker = Worker(config)
    except (ValueError, OSError) as e:  # e.g. an http:// gateway with certificates
        listener.close()
        print(f"prfaas worker: {e}", file=sys.stderr)
        return 2
    tls = {} if worker.control is None else worker.control.uvicorn_options()
    server = uvicorn.Server(uvicorn.Config(create_worker_app(worker), log_level="warning", **tls))
    server.run(sockets=[listener])
    return 0


def _serve(args: argparse.Namespace) -> int:
    from prfaas.deploy.config import (
        DeployConfigError,
        binds_loopback,
        default_config,
        load_deploy_config,
    )

    try:
        cfg = load_deploy_config(args.config) if args.config else default_config()
    except DeployConfigError as e:
        print(f"prfaas serve: {e}", file=sys.stderr)
        return 2
    updates: dict[str, object] = {}
    for key in ("host", "port", "model", "max_model_len", "audit_log", "usage_log", "engine"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    if args.threshold is not None:
        updates["policy"] = cfg.policy.model_copy(update={"threshold_tokens": args.threshold})
    cfg = cfg.model_copy(update=updates)
    engines = {cfg.engine_of(c, i) for c in cfg.clusters for i in c.instances if i.spawn}
    if "vllm" in engines and _vllm_missing():
        print(f"prfaas serve: engine vllm: {VLLM_MISSING}", file=sys.stderr)
        return 2
    api_keys = {t_key: t.name for t in cfg.tenants for t_key in t.api_keys}
    if args.api_key_file is not None:
        from prfaas.deploy.api_keys import ApiKeyFileError, load_api_key_file

        try:
            api_keys.update(load_api_key_file(args.api_key_file))
        except ApiKeyFileError as e:
            print(f"prfaas serve: --api-key-file {e}", file=sys.stderr)
            return 2
    for item in args.api_key:
        key, _, tenant = item.partition("=")
        api_keys[key] = tenant or "default"
    if not api_keys and not args.no_auth and not binds_loopback(cfg.host):
        print(
            "prfaas serve: refusing to serve a non-loopback address without API keys; "
            "pass --api-key or --no-auth",
            file=sys.stderr,
        )
        return 2
    from prfaas.config import SERVER_SECRET_ENV, server_secret_from_env

    if (cfg.kv_index.backend != "memory" or cfg.gateways) and server_secret_from_env() is None:
        print(
            f"prfaas serve: several gateways (a shared kv index, `gateways`) need "
            f"{SERVER_SECRET_ENV} set, the same at each (tenant salts derive from it, so that "
            "a prompt hashes alike at every gateway)",
            file=sys.stderr,
        )
        return 2
    from prfaas.deploy.run import run_deployment

    return asyncio.run(run_deployment(cfg, api_keys, args.log_dir))


def _print_threshold(data: dict[str, object]) -> None:
    """Where t came from, the profiled prefill seconds, and the control loop's state."""
    threshold, control = data.get("threshold"), data.get("control")
    if isinstance(threshold, dict):
        solved = threshold.get("solved_tokens")
        planner = f", planner optimum {solved:.0f}" if isinstance(solved, float | int) else ""
        print(f"t from: {threshold['source']}{planner} ({threshold['reason']})")
        for cluster, p in dict(threshold.get("prefill_s") or {}).items():
            pairs = "  ".join(
                f"{n}:{s * 1000:.1f}ms" for n, s in zip(p["num_tokens"], p["seconds"], strict=True)
            )
            print(f"  prefill {cluster} ({p['instance']}): {pairs}")
    if isinstance(control, dict) and control.get("running"):
        egress = control["egress"]
        changes = ", ".join(control["role_changes"]) or "none"
        print(
            f"control loop: every {control['short_interval_s']}s / {control['long_interval_s']}s, "
            f"t_plan {control['t_plan_tokens']:.0f}, N_p {control['n_p']}, egress "
            f"{egress['goodput_gbps']:.3f} of {egress['capacity_gbps']:g} Gbps, "
            f"role changes: {changes}"
        )


def _status(args: argparse.Namespace) -> int:
    from prfaas.deploy.admin_client import admin_call

    data = admin_call(
        "status", args.url, "/status", args.token, timeout_s=5.0, token_required=False
    )
    if isinstance(data, int):
        return data
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(
        f"policy {data['policy']}  threshold t = {data['threshold_tokens']:.0f} tokens  "
        f"mode {data['mode']}  kv index {data['kv_index_blocks']} blocks"
    )
    _print_threshold(data)
    print(
        f"{'instance':<14}{'cluster':<10}{'role':<9}{'healthy':<9}{'waiting':>8}"
        f"{'running':>8}{'fallbacks':>10}"
    )
    for i in data["instances"]:
        print(
            f"{i['name']:<14}{i['cluster']:<10}{i['role']:<9}{i['healthy']!s:<9}"
            f"{i['waiting']:>8}{i['running']:>8}{i['fallbacks']:>10}"
        )
    return 0


def _canary(args: argparse.Namespace) -> int:
    from prfaas.deploy.admin_client import admin_call

    data = admin_call(
        "canary", args.url, "/admin/canary", args.token, timeout_s=args.timeout, post=True
    )
    if isinstance(data, int):
        return data
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"{'path':<48}{'ok':<6}{'|Δ logprob|':>12}  reason")
        for p in data["paths"]:
            dlp = p["max_abs_dlogprob"]
            shown = "-" if dlp is None else f"{dlp:.2e}"
            flag = " [quarantined]" if p["quarantined"] else ""
            print(f"{p['path']:<48}{p['ok']!s:<6}{shown:>12}  {p['reason']}{flag}")
    return 0 if all(p["ok"] for p in data["paths"]) else 3
