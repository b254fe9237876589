"""The engine's per-layer hook: a streamed prefill-only request hands each layer's final KV
to its sink exactly once, during the step that runs the prompt's last chunk; it equals what
``export_kv`` reads for the same request afterwards. Dense and hybrid (Kimi Linear) models,
one-chunk and chunked prompts, with and without a prefix-cache hit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from prfaas.engine.engine import Engine
from prfaas.engine.request import RequestStatus
from tests.engine.helpers import make_engine
from tests.engine.hybrid_helpers import (
    KDA,
    MLA,
    greedy,
    kimi_engine,
    prompt_of,
    save_kimi_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingSink:
    """A LayerSink that keeps copies and the engine step each call came in."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.steps = 0
        self.num_cached_tokens = 0
        self.begun: list[int] = []
        self.layers: list[tuple[int, int]] = []  # (layer index, step)
        self.tensors: dict[str, torch.Tensor] = {}

    def begin(self) -> None:
        self.begun.append(self.steps)

    def layer(self, layer_index: int, tensors: list[tuple[str, torch.Tensor]]) -> None:
        self.layers.append((layer_index, self.steps))
        for name, t in tensors:
            assert name not in self.tensors, f"{name} streamed twice"
            self.tensors[name] = t.clone()


def stream_and_export(engine: Engine, prompt: list[int]) -> tuple[RecordingSink, dict[str, Any]]:
    """Prefill ``prompt`` streamed; returns the sink and export_kv's tensors by name."""
    sink = RecordingSink(engine)
    req = engine.add_request(prompt, greedy(4), prefill_only=True)
    engine.stream_layers(req.request_id, sink)
    while req.status is not RequestStatus.SENDING_KV:
        sink.steps += 1
        engine.step()
    sink.num_cached_tokens = req.num_cached_tokens
    payload = engine.export_kv(req.request_id)
    assert engine.export_first_token(req.request_id) == payload.first_token_id
    engine.release(req.request_id)
    engine.check_integrity()
    return sink, {name: t for name, _, t in payload.named_tensors()}


def check(engine: Engine, prompt: list[int], num_layers: int) -> RecordingSink:
    sink, exported = stream_and_export(engine, prompt)
    assert sink.begun == [sink.steps], "begin comes once, in the prompt's last step"
    assert sink.layers == [(i, sink.steps) for i in range(num_layers)]
    assert set(sink.tensors) == set(exported)
    for name, t in exported.items():
        assert torch.equal(sink.tensors[name], t), name
    return sink


@pytest.mark.parametrize("chunk", [512, 32])
def test_dense_layers_stream_once_with_final_kv(
    tiny_llama: Path, cache_dir: Path, chunk: int
) -> None:
    engine = make_engine(tiny_llama, cache_dir, max_num_batched_tokens=chunk, block_size=16)
    prompt = prompt_of(90)
    sink = check(engine, prompt, num_layers=2)
    assert sink.steps == (1 if chunk == 512 else 3)
    # A prefix-cache hit: the cached blocks' KV is part of the streamed layers too.
    hit = check(engine, prompt[:80] + prompt_of(20, seed=9), num_layers=2)
    assert hit.num_cached_tokens == 80


@pytest.fixture(scope="module")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(tmp_path_factory.mktemp("kimi"), [KDA, MLA, KDA], 3)


@pytest.mark.parametrize("chunk", [512, 32])
def test_hybrid_layers_stream_latent_and_final_states(
    kimi: Path, cache_dir: Path, chunk: int
) -> None:
    engine = kimi_engine(kimi, cache_dir, max_num_batched_tokens=chunk)
    sink = check(engine, prompt_of(70), num_layers=3)
    assert {"L0.recurrent", "L0.conv", "L1.latent", "L2.recurrent"} <= set(sink.tensors)


def test_no_hook_without_a_streamed_request(tiny_llama: Path, cache_dir: Path) -> None:
    engine = make_engine(tiny_llama, cache_dir)
    calls: list[tuple[Any, ...]] = []
    execute = engine.runner.execute

    def spy(*args: Any) -> torch.Tensor:
        calls.append(args)
        return execute(*args)

    engine.runner.execute = spy  # type: ignore[method-assign]
    engine.add_request(prompt_of(20), greedy(2), prefill_only=True)
    engine.step()
    assert calls and all(len(a) == 1 for a in calls)  # execute(out): no hook at all


def test_stream_layers_refuses_a_started_or_generating_request(
    tiny_llama: Path, cache_dir: Path
) -> None:
    engine = make_engine(tiny_llama, cache_dir, max_num_batched_tokens=16)
    gen = engine.add_request(prompt_of(20), greedy(2))
    with pytest.raises(KeyError):
        engine.stream_layers(gen.request_id, RecordingSink(engine))
    pre = engine.add_request(prompt_of(40), greedy(2), prefill_only=True)
    engine.step()
    engine.step()
    with pytest.raises(ValueError):
        engine.stream_layers(pre.request_id, RecordingSink(engine))
    engine.abort(gen.request_id)
    engine.abort(pre.request_id)
    engine.check_integrity()
