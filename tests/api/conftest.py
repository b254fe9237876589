"""The gateway's fixtures (the fake tier and the tiny LocalBackend server) for the API tests,
and a server on a tiny model with a byte-level tokenizer (JSON and tool calls need real text),
on either engine: the reference engine in-process, or the session's `prfaas serve --engine
vllm` deployment (tests/vllm_deployment.py; only where vLLM is installed: its venv)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import openai
import pytest

from prfaas.gateway.config import GatewayConfig
from tests.engine.helpers import make_engine
from tests.gateway.conftest import (  # noqa: F401
    API_KEY,
    LocalServer,
    fake_server,
    local_server,
    tiny_engine,
    tiny_tokenizer,
)
from tests.integrations.vllm_procs import HAS_VLLM, VLLM_MISSING
from tests.vllm_deployment import TOOLS_TEMPLATE, byte_level_checkpoint

ENGINES = [
    "reference",
    pytest.param("vllm", marks=pytest.mark.skipif(not HAS_VLLM, reason=VLLM_MISSING)),
]


class Served(Protocol):
    @property
    def base_url(self) -> str: ...


def byte_level_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> Iterator[Served]:
    """A module's server (``yield from`` it in a fixture parametrized by ``ENGINES``) on
    ``byte_level_checkpoint`` with ``TOOLS_TEMPLATE``: the reference engine in-process (its
    pool is checked at the end), or the session's vLLM deployment (``vllm_bytes``)."""
    if request.param == "vllm":
        yield request.getfixturevalue("vllm_bytes")
        return
    folder = byte_level_checkpoint(tmp_path_factory.mktemp("bytes"))
    engine = make_engine(folder, cache_dir)
    engine.tokenizer.chat_template = TOOLS_TEMPLATE
    server = LocalServer(engine, GatewayConfig(api_keys={API_KEY: "acme"}), model_name="bytes")
    with server.thread:
        yield server
        server.check_engine()


@pytest.fixture
def client(server: Served) -> Iterator[openai.OpenAI]:
    """The official client of a module's ``server``."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield c
