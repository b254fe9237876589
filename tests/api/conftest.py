"""The gateway's fixtures (the fake tier and the tiny LocalBackend server) for the API tests,
and a server on a tiny model with a byte-level tokenizer (JSON and tool calls need real text),
on either engine: the reference engine in-process, or `prfaas serve --engine vllm` (one
deployment per session, every instance vLLM; only where vLLM is installed: `make test-vllm`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import openai
import pytest

from prfaas.deploy.launcher import free_port
from prfaas.gateway.config import GatewayConfig
from tests.conftest import make_tiny_checkpoint
from tests.deploy_helper import deploy, topology
from tests.engine.helpers import make_engine
from tests.engine.test_structured_outputs import VOCAB, _byte_level_tokenizer
from tests.gateway.conftest import (  # noqa: F401
    API_KEY,
    LocalServer,
    fake_server,
    local_server,
    tiny_engine,
    tiny_tokenizer,
)

ENGINES = [
    "reference",
    pytest.param(
        "vllm",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("vllm") is None,
            reason="vLLM is not installed here: `make test-vllm` runs these in .venv-vllm",
        ),
    ),
]
# A tools-aware template that renders plain chats too: the vLLM deployment serves both the
# structured-output and the tool tests.
TOOLS_TEMPLATE = (
    "{% if tools %}tools:{% for t in tools %} {{ t.function.name }}{% endfor %}\n{% endif %}"
    "{% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}"
    "<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m.role }}: {{ m.content }}{% endif %}\n{% endfor %}assistant:"
)
VLLM_TOKEN = "api-tests-cluster-token"
# Three vLLM engines starting side by side on 2 shared cores: over 5 minutes at load 16.
VLLM_START_S = 900.0


class Served(Protocol):
    @property
    def base_url(self) -> str: ...


@dataclass
class Deployed:
    base_url: str
    folder: Path  # the checkpoint it serves


def byte_level_checkpoint(folder: Path) -> Path:
    """A tiny random Llama whose tokenizer spells any text byte by byte. Heads of 32 dims:
    the smallest vLLM's CPU attention takes (the reference engine takes any)."""
    make_tiny_checkpoint(folder, "llama", vocab_size=VOCAB, hidden_size=128)
    _byte_level_tokenizer(folder)
    return folder


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


@pytest.fixture(scope="session")
def vllm_bytes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """`prfaas serve --engine vllm` on ``byte_level_checkpoint`` with ``TOOLS_TEMPLATE``,
    once per session (the standard topology: a prompt over 32 tokens takes the remote path,
    so grammars, penalties and logprobs cross the KV hand-off too)."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("vllm-api")
    folder = byte_level_checkpoint(tmp / "bytes")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = TOOLS_TEMPLATE  # the gateway reads it from the folder
    tokenizer.save_pretrained(folder)
    config = topology(
        folder,
        free_port(),
        served_model_name="bytes",
        tenants=[{"name": "acme", "api_keys": [API_KEY]}],
        engine="vllm",
        max_model_len=512,
    )
    # One unbound OpenMP thread and a small KV pool each (docs/vllm.md: shared cores).
    for cluster in config["clusters"]:
        for inst in cluster["instances"]:
            inst |= {"num_threads": 1, "kv_cache_gb": 0.25}
    with deploy(config, tmp, VLLM_TOKEN, start_s=VLLM_START_S) as running:
        yield Deployed(running.base_url, folder)


@pytest.fixture
def client(server: Served) -> Iterator[openai.OpenAI]:
    """The official client of a module's ``server``."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield c
