"""The embedded default model (SmolLM2) behind a single-process gateway (create_local_app)
answers through the official openai client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from prfaas.config import EngineConfig
from prfaas.deploy.local import create_local_app
from prfaas.engine.engine import Engine
from tests.gateway.conftest import ServerThread


def test_capital_of_france(cache_dir: Path) -> None:
    engine = Engine(EngineConfig(model=None, cache_dir=cache_dir, num_kv_blocks=512))
    app = create_local_app(engine, "SmolLM2-135M-Instruct")
    with (
        ServerThread(app, lifespan="on") as server,
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none") as client,
    ):
        out = client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0.0,
        )
        assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert "Paris" in (out.choices[0].message.content or ""), out
    assert out.usage is not None and out.usage.prompt_tokens > 5
    engine.check_integrity()  # the lifespan stopped the engine thread; nothing is left running
    assert not engine.has_unfinished()
