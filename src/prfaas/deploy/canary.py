"""The canary in a running deployment: its probe (a prompt on one forced path through the
gateway's dispatch), the paths the fleet offers now, ``/admin/canary`` (GET: the board;
POST: a round now) and the ``prfaas_canary_*`` metrics."""

from __future__ import annotations

import hmac
import os
import uuid
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from prometheus_client import Gauge

from prfaas.canary.config import CanaryConfig
from prfaas.canary.paths import CanaryPath, enumerate_paths
from prfaas.canary.runner import Canary, Probe
from prfaas.canary.verdict import PathOutput
from prfaas.dispatch.cluster import ClusterBackend
from prfaas.gateway.backend import GenerationRequest, aclose
from prfaas.gateway.metrics import GatewayMetrics
from prfaas.messages import TOKEN_HEADER, SamplingSpec, WorkerInfo

CANARY_TENANT = "canary"


def build_canary(
    config: CanaryConfig, backend: ClusterBackend, tokenizer: Any, max_model_len: int
) -> Canary:
    fleet = backend.fleet

    def link_of(prefill_cluster: str, decode: WorkerInfo) -> tuple[str, str]:
        target = backend.settings.kv_target(prefill_cluster, decode)
        return target.link, target.codec

    def paths() -> list[CanaryPath]:
        live = [r.info for n, r in fleet.workers.items() if fleet.healthy(n) and not r.draining]
        return enumerate_paths(live, link_of)

    room = max_model_len - config.max_tokens - 1
    prompts = [[int(t) for t in tokenizer.encode(text)][:room] for text in config.prompts]
    return Canary(config, paths, probe_through(backend), [p for p in prompts if p])


def probe_through(backend: ClusterBackend) -> Probe:
    async def probe(
        path: CanaryPath, prompt: list[int], max_tokens: int, seed: int | None
    ) -> PathOutput:
        # A salt of its own: every probe computes the whole prompt, on every path.
        req = GenerationRequest(
            request_id=f"canary-{uuid.uuid4().hex}",
            tenant=CANARY_TENANT,
            tenant_salt=os.urandom(16),
            prompt_token_ids=prompt,
            params=SamplingSpec(
                max_tokens=max_tokens,
                temperature=0.0 if seed is None else 1.0,
                seed=seed,
                ignore_eos=True,
                logprobs=0,  # the chosen tokens' own
            ),
        )
        handle = await backend.submit_on(req, path.prefill, path.decode)
        tokens: list[int] = []
        logprobs: list[float] = []
        computed: int | None = None
        try:
            async for event in handle.events:
                if computed is None:
                    computed = event.computed_tokens
                tokens += event.token_ids
                logprobs += [entry.logprob for entry in event.logprobs or ()]
                if event.finished:
                    break
        finally:
            await aclose(handle.events)
        if len(tokens) != max_tokens:
            raise RuntimeError(f"{len(tokens)} tokens of {max_tokens}")
        if len(logprobs) != len(tokens):
            raise RuntimeError(f"{len(logprobs)} logprobs for {len(tokens)} tokens")
        return PathOutput(tuple(tokens), tuple(logprobs), computed or 0)

    return probe


def add_canary_routes(app: FastAPI, canary: Canary, cluster_token: str) -> None:
    def check(request: Request) -> None:
        if not hmac.compare_digest(request.headers.get(TOKEN_HEADER, ""), cluster_token):
            raise HTTPException(401, "missing or invalid cluster token")

    @app.get("/admin/canary", include_in_schema=False)
    async def board(request: Request) -> dict[str, Any]:
        check(request)
        return canary_status(canary)

    @app.post("/admin/canary", include_in_schema=False)
    async def run_now(request: Request) -> dict[str, Any]:
        check(request)
        await canary.run_round()
        return canary_status(canary)


def canary_status(canary: Canary) -> dict[str, Any]:
    config = canary.config
    return {
        "enabled": config.enabled,
        "period_s": config.period_s,
        "quarantine": config.quarantine,
        "rounds": canary.board.rounds,
        "paths": canary.board.report(),
    }


def add_canary_metrics(metrics: GatewayMetrics, canary: Canary) -> None:
    """Per path: 1 if it passed its newest round, its |Δ logprob|, quarantine, failures."""
    r = metrics.registry
    labels = ["prefill", "decode", "link", "codec"]
    gauges = {
        "ok": Gauge(
            "prfaas_canary_path_ok", "1 if the path passed its newest round", labels, registry=r
        ),
        "max_abs_dlogprob": Gauge(
            "prfaas_canary_max_abs_dlogprob",
            "Largest |logprob difference| from the reference over the common tokens",
            labels,
            registry=r,
        ),
        "quarantined": Gauge(
            "prfaas_canary_quarantined", "1 if the router avoids the path", labels, registry=r
        ),
        "failures": Gauge(
            "prfaas_canary_failures", "Rounds in which the path broke its bound", labels, registry=r
        ),
    }
    rounds = Gauge("prfaas_canary_rounds", "Completed canary rounds", registry=r)
    rounds.set_function(lambda: canary.board.rounds)

    def refresh() -> None:
        for row in canary.board.report():
            key = [str(row[k]) for k in labels]
            for name, gauge in gauges.items():
                value = row[name]
                gauge.labels(*key).set(float(value or 0))  # type: ignore[arg-type]

    canary.after_round.append(refresh)
