"""Run a deployment in the foreground: start it, show progress, print the endpoint, serve
until Ctrl-C, then stop every process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from prfaas.deploy.config import DeployConfig
from prfaas.deploy.models import ModelFacts, served_versions
from prfaas.libc import TRIM_EVERY_S, cap_arenas, trim_heap
from prfaas.router.kv_index import KvIndexUnavailableError

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 600.0


async def trim_heap_every(every_s: float) -> None:
    """Hand the allocator's free pages back every ``every_s``. The gateway's threads (link
    emulator relays, a thread per connection direction; ``to_thread`` calls) free
    megabytes that glibc keeps in the arena each thread used: without a trim its RSS grew
    by what every arena once held at its peak (docs/operations.md, the soak)."""
    while True:
        await asyncio.sleep(every_s)
        trim_heap()


def model_facts(cfg: DeployConfig) -> tuple[str, Any, int]:
    """Resolve the model once here (GGUF converted before workers start, so they don't
    race): its folder, tokenizer and context limit."""
    from transformers import AutoConfig, AutoTokenizer

    from prfaas.config import default_cache_dir
    from prfaas.model.loader import resolve_model_folder

    folder = resolve_model_folder(cfg.model, default_cache_dir())
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    hf = AutoConfig.from_pretrained(folder, local_files_only=True)
    limit = int(getattr(hf, "max_position_embeddings", 0) or 4096)
    if cfg.max_model_len is not None:
        limit = min(limit, cfg.max_model_len)
    return str(folder), tokenizer, limit


async def run_deployment(cfg: DeployConfig, api_keys: dict[str, str], log_dir: Path | None) -> int:
    import uvicorn
    from rich.console import Console

    from prfaas.deploy.config import open_kv_index
    from prfaas.deploy.launcher import MALLOC_ARENAS, listen_socket
    from prfaas.deploy.serve import (
        build_deployment,
        control_server,
        start_control,
        wait_ready,
        wait_serving,
    )

    console = Console(stderr=True)
    if "MALLOC_ARENA_MAX" not in os.environ:  # an operator's own value wins
        cap_arenas(MALLOC_ARENAS)  # as for the workers it spawns (``Launcher.spawn``)
    try:  # before the model: an unreachable Redis is a configuration error, said at once
        kv_index = open_kv_index(cfg.kv_index)
    except KvIndexUnavailableError as e:
        print(f"prfaas serve: {e} (kv_index.url in the deployment config)", file=sys.stderr)
        return 2
    with console.status("resolving the model…"):
        folder, tokenizer, max_model_len = await asyncio.to_thread(model_facts, cfg)
        models = {}
        for version, view in served_versions(cfg)[1:]:
            facts = await asyncio.to_thread(model_facts, view)
            models[version.key] = ModelFacts(*facts)
    url = f"http://{cfg.host}:{cfg.port}"
    control = cfg.control_plane
    control_host = control.host or cfg.host
    # Bound now, served from this socket: the workers spawned below register here, and no
    # other process can take the port before the listener starts (port 0: the kernel picks).
    try:
        control_socket = None if control.insecure else listen_socket(control_host, control.port)
    except OSError as e:
        print(f"prfaas serve: control_plane port {control.port}: {e}", file=sys.stderr)
        return 2
    control_port = control_socket.getsockname()[1] if control_socket is not None else 0
    # Where spawned workers register: the control listener (mutual TLS), unless insecure.
    worker_url = url if control.insecure else f"https://{control_host}:{control_port}"
    deployment = build_deployment(
        cfg,
        tokenizer,
        folder,
        max_model_len,
        cfg.block_size(),  # what spawned workers use; others must match it
        gateway_url=worker_url,
        api_keys=api_keys,
        log_dir=log_dir,
        kv_index=kv_index,
        models=models,
    )
    server = uvicorn.Server(
        uvicorn.Config(deployment.app, host=cfg.host, port=cfg.port, log_level="warning")
    )
    control_listener = control_server(deployment, control_host, control_port)
    servers, runs = [server], [server.serve()]
    if control_listener is not None:
        assert control_socket is not None  # a secure control plane: bound above
        servers.append(control_listener)
        runs.append(control_listener.serve(sockets=[control_socket]))
    serving = asyncio.gather(*runs)
    trimming = asyncio.create_task(trim_heap_every(TRIM_EVERY_S))
    try:
        names = ", ".join(deployment.expected_workers)
        with console.status(f"starting workers ({names}); loading the model in each…"):
            await wait_ready(deployment, START_TIMEOUT_S)
        with console.status("profiling the instances for the threshold t…"):
            choice = await start_control(deployment)
        with console.status("waiting for every configured path…") as shown:
            await wait_serving(deployment, lambda why: shown.update(f"not ready: {why}…"))
        # Never the key itself: the banner ends up in terminals, CI logs and screenshots.
        auth = ' -H "Authorization: Bearer $PRFAAS_API_KEY"' if api_keys else ""
        names = ", ".join(dict.fromkeys(v.version.name for v in deployment.versions))
        print(f"prfaas is serving {names} at {url}/v1")
        if len(deployment.versions) > 1:
            weights = ", ".join(
                f"{v.version.key} ({v.version.weight:g}%)" for v in deployment.versions
            )
            print(f"  model versions: {weights}; rollouts: prfaas rollout --url {url}")
        if not control.insecure:
            print(f"  workers register at {worker_url} (mutual TLS, certificate-bound clusters)")
        solved = "" if choice.solved_tokens is None else f", planner {choice.solved_tokens:.0f}"
        print(
            f"  threshold t = {choice.applied_tokens:.0f} tokens ({choice.source}{solved}); "
            f"status: prfaas status --url {url}"
        )
        body = json.dumps(
            {
                "model": deployment.backend.model_name,
                "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            }
        )
        print(
            f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} "
            f"-d '{body}'"
        )
        sys.stdout.flush()
        await serving
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    except (RuntimeError, TimeoutError) as e:
        print(f"prfaas serve: {e}", file=sys.stderr)
        return 1
    finally:
        trimming.cancel()
        for srv in servers:
            srv.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(serving, 10.0)
        await deployment.aclose_backends()
        deployment.close()
    return 0
