"""The embedded default model (SmolLM2) behind the gateway answers through the openai client."""

from __future__ import annotations

from pathlib import Path

import openai

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.gateway.config import GatewayConfig
from tests.gateway.conftest import LocalServer


def test_capital_of_france(cache_dir: Path) -> None:
    engine = Engine(EngineConfig(model=None, cache_dir=cache_dir, num_kv_blocks=512))
    server = LocalServer(engine, GatewayConfig(), model_name="SmolLM2-135M-Instruct")
    with server.thread, openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none") as client:
        out = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0.0,
        )
        server.check_engine()
    assert "Paris" in (out.choices[0].message.content or ""), out
    assert out.usage is not None and out.usage.prompt_tokens > 5
