"""S_kv from the config equals the bytes the real engine exports (skips until it exists)."""

import json
from pathlib import Path

import pytest

from prfaas.kvcache.spec import kv_bytes, specs_from_hf_config


def _fixture(request: pytest.FixtureRequest, name: str) -> Path:
    try:
        return Path(request.getfixturevalue(name))
    except pytest.FixtureLookupError:
        pytest.skip(f"fixture {name} not available")


@pytest.mark.parametrize("checkpoint", ["tiny_llama", "tiny_qwen3"])
@pytest.mark.parametrize("prompt_len", [1, 16, 37])
def test_exported_payload_matches_kv_bytes(
    request: pytest.FixtureRequest, checkpoint: str, prompt_len: int
) -> None:
    pytest.importorskip("torch")
    engine_module = pytest.importorskip("prfaas.engine.engine")
    config_module = pytest.importorskip("prfaas.config")
    params_module = pytest.importorskip("prfaas.engine.sampling_params")
    if not hasattr(engine_module.Engine, "export_kv"):
        pytest.skip("engine has no KV export yet")
    folder = _fixture(request, checkpoint)
    cache_dir = _fixture(request, "cache_dir")
    engine = engine_module.Engine(
        config_module.EngineConfig(model=str(folder), cache_dir=cache_dir, num_kv_blocks=64)
    )
    params = params_module.SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    req = engine.add_request([3 + i % 200 for i in range(prompt_len)], params, prefill_only=True)
    while req.status.value != "sending_kv":
        engine.step()
    payload = engine.export_kv(req.request_id)
    engine.release(req.request_id)
    dtype_bytes = payload.kv[0][0].element_size()
    config = json.loads((folder / "config.json").read_text())
    specs = specs_from_hf_config(config, kv_dtype_bytes=dtype_bytes)
    assert payload.kv_bytes == kv_bytes(specs, prompt_len)
