"""The gateway's fixtures (the fake tier and the tiny LocalBackend server) for the API tests,
and a server on a tiny model with a byte-level tokenizer (JSON and tool calls need real text)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from prfaas.gateway.config import GatewayConfig
from tests.conftest import make_tiny_checkpoint
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


def byte_level_server(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, chat_template: str
) -> Iterator[LocalServer]:
    """A module's server (``yield from`` it in a fixture): a tiny random Llama whose tokenizer
    spells any text byte by byte, with ``chat_template``; its pool is checked at the end."""
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("bytes"), "llama", vocab_size=VOCAB)
    _byte_level_tokenizer(folder)
    engine = make_engine(folder, cache_dir)
    engine.tokenizer.chat_template = chat_template
    server = LocalServer(engine, GatewayConfig(api_keys={API_KEY: "acme"}), model_name="bytes")
    with server.thread:
        yield server
        server.check_engine()


@pytest.fixture
def client(server: LocalServer) -> Iterator[openai.OpenAI]:
    """The official client of a module's ``server``."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0) as c:
        yield c
