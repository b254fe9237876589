"""The OpenAI-compatible HTTP front door, as an app factory over a ``Backend``.

Per request: authenticate (API key → tenant, salt derived here), parse and validate the body,
pick the model version (``catalog``: the request's ``model``, the traffic split), tokenize,
take it from the tenant's rate limits (``tenancy.gate``, else 429), admit
(``admission``: bounded in-flight counts, else 429), submit to the backend,
and answer as a whole body or as SSE. Bad input is a 4xx in the OpenAI error format, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from prfaas.api.choices import Choices
from prfaas.api.errors import APIError
from prfaas.api.prepare import (
    Prepared,
    parse_body,
    prepare_chat,
    prepare_completion,
    sibling_params,
)
from prfaas.api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from prfaas.api.render import Renderer
from prfaas.gateway.admission import Admission
from prfaas.gateway.auth import Authenticator, Tenant
from prfaas.gateway.backend import Backend, GenerationRequest, NoWorker, Overloaded
from prfaas.gateway.catalog import ModelCatalog, ServedVersion, UnknownModel
from prfaas.gateway.config import GatewayConfig
from prfaas.gateway.generation import Generation, GenerationStream, IncompleteStreamError
from prfaas.gateway.metrics import CONTENT_TYPE, GatewayMetrics, route_kind
from prfaas.gateway.middleware import (
    ROUTE_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
    BodyLimitMiddleware,
)
from prfaas.messages import SamplingSpec
from prfaas.tenancy.gate import TenantGate
from prfaas.tenancy.limits import RateLimited

logger = logging.getLogger(__name__)

T = TypeVar("T")

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    backend: Backend | ModelCatalog,
    config: GatewayConfig | None = None,
    *,
    metrics: GatewayMetrics | None = None,
    lifespan: Lifespan | None = None,
    readiness: Callable[[], str | None] | None = None,
) -> FastAPI:
    """The gateway app. ``metrics`` (default: a fresh registry) is where other components add
    their gauges; it is also ``app.state.metrics``. ``lifespan`` starts and stops what the
    backend needs (engines, connections) with the server. ``readiness`` says why the
    backend cannot serve a request yet (None once it can): ``/health`` answers 503 with that
    reason until then, 200 after (vLLM's semantics: a probe never sends traffic too early).
    ``backend`` is one model's, or a ``ModelCatalog`` of several models and versions."""
    config = config or GatewayConfig()
    metrics = metrics or GatewayMetrics()
    auth = Authenticator(config.api_keys, config.server_secret, config.default_tenant)
    catalog = backend if isinstance(backend, ModelCatalog) else ModelCatalog.single(backend)
    admission = Admission(config, catalog.num_decode)
    metrics.in_flight.set_function(lambda: admission.in_flight)
    # Rate limits and usage per tenant.
    tenants = TenantGate(config.tenant_limits, config.usage_log, metrics.registry)

    app = FastAPI(
        title="prfaas", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.metrics = metrics
    app.state.admission = admission
    app.state.tenants = tenants
    app.state.authenticator = auth
    app.state.catalog = catalog
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=config.max_body_bytes,
        body_timeout_s=config.body_timeout_s,
    )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.get("/health")
    async def health() -> Response:
        reason = readiness() if readiness is not None else None
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            auth.authenticate(request.headers.get("authorization"))
        except APIError as exc:
            return exc.response()
        cards = [
            ModelCard(id=name, max_model_len=min(v.backend.max_model_len for v in catalog.of(name)))
            for name in catalog.names()
        ]
        return JSONResponse(ModelList(data=cards).model_dump())

    async def submit(
        version: ServedVersion,
        tenant: Tenant,
        prompt: list[int],
        params: SamplingSpec,
        request_id: str,
        arrival_s: float,
        **share: bool,
    ) -> Generation:
        req = GenerationRequest(request_id, tenant.name, tenant.salt, prompt, params)
        backend = version.backend
        # The admission queue bounds the wait for a decode slot; without one, bound the submit.
        ttl_s = None if admission.bounds_decode else admission.config.queue_ttl_s
        prompt_len, max_tokens = len(prompt), params.max_tokens
        label = catalog.usage_label(version)
        try:
            reserved = tenants.admit(tenant.name, request_id, label, prompt_len, max_tokens)
        except (RateLimited, ValueError) as exc:
            raise _refused(exc) from None
        catalog.hold(version)  # dropped on refusal or at release
        try:
            await admission.acquire()
        except BaseException as exc:
            tenants.refused(reserved, request_id)
            catalog.drop(version)
            if isinstance(exc, Overloaded | NoWorker):
                raise _refused(exc) from None
            raise
        try:
            handle = await asyncio.wait_for(backend.submit(req), ttl_s)
        except BaseException as exc:
            admission.release(request_id)
            tenants.refused(reserved, request_id)
            catalog.drop(version)
            if isinstance(exc, TimeoutError):
                exc = Overloaded(admission.config.retry_after_s, "timed out waiting for capacity")
            if isinstance(exc, ValueError | Overloaded | NoWorker):
                raise _refused(exc) from None
            raise
        if handle.decode_instance is not None:
            admission.assign(request_id, handle.decode_instance)

        def release() -> None:
            admission.release(request_id)
            usage = gen.usage()
            tenants.finish(
                reserved,
                request_id,
                prompt_tokens=usage.prompt_tokens,
                cached_tokens=usage.prompt_tokens_details.cached_tokens,
                completion_tokens=usage.completion_tokens,
                remote=route_kind(gen.route) == "prfaas",
            )
            catalog.drop(version)

        gen = Generation(
            handle,
            metrics,
            request_id=request_id,
            model=version.name,
            num_prompt_tokens=prompt_len,
            arrival_s=arrival_s,
            release=release,
            **share,
        )
        return gen

    async def submit_all(
        version: ServedVersion,
        tenant: Tenant,
        prepared: Prepared,
        request_id: str,
        arrival_s: float,
    ) -> list[Generation]:
        """Every sequence of the request, in choice order. Siblings (``n > 1``) are submitted
        once the first sequence of their prompt has its first token: its prompt's blocks are
        then in the prefix cache and the siblings share them instead of computing them."""
        gens: list[Generation] = []
        many = len(prepared.prompts) * prepared.n > 1
        try:
            for prompt in prepared.prompts:
                for j in range(prepared.n):
                    rid = f"{request_id}-{len(gens)}" if many else request_id
                    params = sibling_params(prepared.params, j)
                    share = {"counts_prompt": j == 0, "counts_output": not prepared.echo_only}
                    gen = await submit(version, tenant, prompt, params, rid, arrival_s, **share)
                    gens.append(gen)
                    if j == 0 and prepared.n > 1:
                        await gens[-1].prefetch()
        except BaseException:
            for gen in gens:
                await gen.close(499)
            raise
        return gens

    async def generate(request: Request, chat: bool) -> Response:
        arrival_s = time.perf_counter()
        tenant = auth.authenticate(request.headers.get("authorization"))
        raw = await request.body()
        parsed: ChatCompletionRequest | CompletionRequest
        if chat:
            parsed = parse_body(raw, ChatCompletionRequest)
        else:
            parsed = parse_body(raw, CompletionRequest)
        version = pick(parsed.model, tenant.name, request.headers.get(SESSION_HEADER))
        # Held from the pick: a version at weight 0 is not drained while this one prepares.
        catalog.hold(version)
        try:
            backend = version.backend
            prepared: Prepared
            if isinstance(parsed, ChatCompletionRequest):
                prepared = prepare_chat(parsed, backend.tokenizer, backend.max_model_len)
            else:
                prepared = prepare_completion(parsed, backend.tokenizer, backend.max_model_len)
            request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
            gens = await submit_all(version, tenant, prepared, request_id, arrival_s)
        finally:
            catalog.drop(version)
        choices = Choices(gens, Renderer(prepared, backend.tokenizer), request_id, version.name)
        served = {VERSION_HEADER: version.key}
        if prepared.stream:
            chunks = choices.chat_chunks if chat else choices.completion_chunks
            write_timeout_s = config.stream_write_timeout_s
            stream = GenerationStream(choices, chunks(prepared.include_usage), write_timeout_s)
            stream.headers.update(served)
            return stream
        status = 500
        try:
            whole = choices.chat_completion() if chat else choices.completion()
            body = await _unless_disconnected(request, whole)
            status = 200
        except ClientDisconnected:
            status = CLIENT_CLOSED
            raise
        except (ConnectionError, IncompleteStreamError) as exc:  # a worker gone or stalled
            status = 502
            raise APIError(502, f"generation failed: {exc}"[:500]) from None
        finally:
            await choices.close(status)
        return JSONResponse(body.model_dump(), headers={ROUTE_HEADER: choices.route, **served})

    def pick(model: str | None, tenant: str, session: str | None) -> ServedVersion:
        try:
            return catalog.pick(model, tenant, session[:256] if session else None)
        except UnknownModel:
            raise APIError(
                404,
                f"The model `{(model or '')[:200]}` does not exist.",
                code="model_not_found",
                param="model",
            ) from None

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _answer(metrics, generate(request, chat=True))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _answer(metrics, generate(request, chat=False))

    return app


class ClientDisconnected(Exception):
    """The client went away before its whole (non-streamed) answer was ready."""


CLIENT_CLOSED = 499  # the status nginx logs for it; counted in metrics, never sent


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, but cancel it (the backend then aborts the request and frees its
    blocks) if the client disconnects first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnected
    return task.result()


async def _answer(metrics: GatewayMetrics, work: Awaitable[Response]) -> Response:
    """Run an endpoint; refusals become OpenAI errors, and a bug a 500 (logged), never a crash."""
    try:
        return await work
    except APIError as exc:
        error = exc
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED)  # nobody reads it
    except Exception:
        logger.exception("unexpected error while serving a request")
        error = APIError(500, "internal server error")
    metrics.requests.labels("none", str(error.status)).inc()
    return error.response()


def _refused(exc: Exception) -> APIError:
    """A refusal as the client sees it: ``Overloaded`` (admission) and ``RateLimited`` (the
    tenant's limits) are 429 + Retry-After, ``NoWorker`` 503, bad input (``ValueError``) 400."""
    if isinstance(exc, Overloaded | RateLimited):
        retry = str(max(1, math.ceil(exc.retry_after_s)))
        return APIError(429, str(exc), code="rate_limit_exceeded", headers={"Retry-After": retry})
    if isinstance(exc, NoWorker):
        return APIError(503, f"no worker can serve this request: {exc}"[:500])
    return APIError(400, str(exc)[:500])
