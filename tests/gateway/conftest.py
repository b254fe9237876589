"""Gateway test fixtures: a uvicorn server on a free loopback port in a background thread,
the tiny checkpoint behind a LocalBackend, and a fake backend for admission and fuzz tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn
from fastapi import FastAPI

from prfaas.deploy.launcher import free_port
from prfaas.deploy.local import LocalBackend
from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.gateway.app import create_app
from prfaas.gateway.backend import GenerationHandle, GenerationRequest
from prfaas.gateway.config import GatewayConfig
from prfaas.messages import TokenEvent
from tests.engine.helpers import make_engine

T = TypeVar("T")
API_KEY = "sk-test-acme"
TINY_CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


class ServerThread:
    """Serve ``app`` with uvicorn on its own loop; ``start``/``stop`` hooks run on that loop."""

    def __init__(
        self,
        app: FastAPI,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        lifespan: str = "off",
        options: dict[str, Any] | None = None,  # more uvicorn.Config keywords (e.g. TLS)
    ) -> None:
        self.app = app
        self.port = free_port()
        scheme = "https" if options and "ssl_context_factory" in options else "http"
        self.base_url = f"{scheme}://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan=lifespan,
            **(options or {}),
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._on_start, self._on_stop = on_start, on_stop
        self._ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self._on_start is not None:
            self._on_start()
        self._ready.set()
        try:
            await self.server.serve()
        finally:
            if self._on_stop is not None:
                await self._on_stop()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        for _ in range(300):
            if self.server.started:
                return self
            self._thread.join(0.05)
        raise RuntimeError("server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        assert not self._thread.is_alive()

    def in_flight(self) -> int:
        """Requests the app has admitted and not yet closed (waits briefly for them to close)."""
        admission = self.app.state.admission
        for _ in range(100):
            if admission.in_flight == 0:
                break
            time.sleep(0.02)
        return int(admission.in_flight)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (e.g. an AsyncEngine call) and wait for it."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


class LocalServer:
    def __init__(self, engine: Engine, config: GatewayConfig, model_name: str = "tiny") -> None:
        self.async_engine = AsyncEngine(engine)
        self.backend = LocalBackend(self.async_engine, model_name)
        self.app = create_app(self.backend, config)
        self.thread = ServerThread(self.app, self.async_engine.start, self.async_engine.shutdown)

    @property
    def base_url(self) -> str:
        return self.thread.base_url

    def check_engine(self) -> None:
        """Nothing left running, and the pool's bookkeeping holds."""

        def check(e: Engine) -> bool:
            e.check_integrity()
            return e.has_unfinished()

        assert self.thread.run(self.async_engine.call(check)) is False


@pytest.fixture(scope="session")
def tiny_engine(tiny_llama: Path, cache_dir: Path) -> Engine:
    engine = make_engine(tiny_llama, cache_dir)
    engine.tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return engine


@pytest.fixture(scope="session")
def local_server(tiny_engine: Engine) -> Iterator[LocalServer]:
    server = LocalServer(tiny_engine, GatewayConfig(api_keys={API_KEY: "acme"}))
    with server.thread:
        yield server


class FakeBackend:
    """Instant (or held) generation without an engine: echoes the first prompt tokens."""

    def __init__(self, tokenizer: Any, max_model_len: int = 512) -> None:
        self.model_name = "fake"
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.hold: asyncio.Event | None = None
        self.fail: BaseException | None = None  # raised by submit
        self.fail_mid_stream = False
        self.end_early = False  # events end without a finished delta
        self.submit_hold: asyncio.Event | None = None  # the backend's queue never moves
        self.submitted: list[GenerationRequest] = []

    def num_decode(self) -> None:
        return None

    async def submit(self, req: GenerationRequest) -> GenerationHandle:
        self.submitted.append(req)
        if self.submit_hold is not None:
            await self.submit_hold.wait()
        if self.fail is not None:
            raise self.fail
        return GenerationHandle("fake instance=f-0", 0, self._events(req))

    async def _events(self, req: GenerationRequest) -> AsyncIterator[TokenEvent]:
        if self.hold is not None:
            await self.hold.wait()
        n = req.params.max_tokens
        for i in range(n):
            if self.fail_mid_stream and i == 1:
                raise ConnectionError("decode worker lost")
            if self.end_early and i == 1:
                return
            yield TokenEvent(
                request_id=req.request_id,
                token_ids=[3 + i % 7],
                text=f" w{3 + i % 7}",
                finished=i == n - 1,
                finish_reason="length",
            )


@pytest.fixture(scope="session")
def fake_server(tiny_tokenizer: Any) -> Iterator[tuple[FakeBackend, ServerThread]]:
    backend = FakeBackend(tiny_tokenizer)
    app = create_app(backend, GatewayConfig(max_in_flight=2, retry_after_s=3.0))
    with ServerThread(app) as server:
        yield backend, server


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_engine: Engine) -> Any:
    return tiny_engine.tokenizer
