"""The KV payload ⇄ transfer layers adapter, for a dense and a hybrid model: what the
prefill worker frames is exactly what the decode worker rebuilds and imports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.engine.helpers import make_engine
from tests.engine.hybrid_helpers import greedy, kimi_engine, prompt_of, save_kimi_checkpoint

from prfaas.decode.kv_import import wire_to_payload
from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvImportError, KvPayload
from prfaas.engine.logprobs import TokenLogprobs
from prfaas.prefill.kv_export import payload_to_wire
from prfaas.transfer.receiver import ReceivedTransfer


def export(engine: Engine, prompt: list[int]) -> KvPayload:
    req = engine.add_request(prompt, greedy(8), prefill_only=True)
    while req.status.value != "sending_kv":
        engine.step()
    payload = engine.export_kv(req.request_id)
    engine.release(req.request_id)
    return payload


def decode(engine: Engine, payload: KvPayload) -> list[int]:
    req = engine.import_request(payload, greedy(8))
    while engine.has_unfinished():
        engine.step()
    engine.check_integrity()
    return list(req.output_token_ids)


def through_wire(payload: KvPayload, layout: list) -> KvPayload:  # type: ignore[type-arg]
    header, arrays = payload_to_wire(payload, "r1", "raw", bytes(16))
    assert header.raw_bytes == payload.kv_bytes + 8  # + the first token
    return wire_to_payload(ReceivedTransfer(header, arrays), payload.token_ids, layout)


@pytest.fixture(scope="module")
def kimi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_kimi_checkpoint(
        tmp_path_factory.mktemp("kimi"),
        ["linear_attention", "linear_attention", "full_attention"],
        1,
    )


def test_dense_payload_survives_the_wire(tiny_llama: Path, cache_dir: Path) -> None:
    a, b = make_engine(tiny_llama, cache_dir), make_engine(tiny_llama, cache_dir)
    prompt = prompt_of(37)
    payload = export(a, prompt)
    rebuilt = through_wire(payload, b.layout)
    assert all(
        torch.equal(x, y)
        for p, q in zip(payload.kv, rebuilt.kv, strict=True)
        for x, y in zip(p, q, strict=True)
    )
    assert decode(b, rebuilt) == decode(make_engine(tiny_llama, cache_dir), payload)


def test_hybrid_payload_survives_the_wire(kimi: Path, cache_dir: Path) -> None:
    a, b = kimi_engine(kimi, cache_dir), kimi_engine(kimi, cache_dir)
    payload = export(a, prompt_of(29))
    assert payload.latent and payload.states
    rebuilt = through_wire(payload, b.layout)
    for (_, _, x), (_, _, y) in zip(payload.named_tensors(), rebuilt.named_tensors(), strict=True):
        assert torch.equal(x, y)
    assert decode(b, rebuilt) == decode(kimi_engine(kimi, cache_dir), payload)


def test_wire_layers_of_another_model_are_refused(
    tiny_llama: Path, kimi: Path, cache_dir: Path
) -> None:
    dense = export(make_engine(tiny_llama, cache_dir), prompt_of(20))
    header, arrays = payload_to_wire(dense, "r2", "raw", bytes(16))
    hybrid = kimi_engine(kimi, cache_dir)
    with pytest.raises(KvImportError):
        wire_to_payload(ReceivedTransfer(header, arrays), dense.token_ids, hybrid.layout)


def test_logprob_layers_survive_the_wire_and_bad_ones_are_refused(
    tiny_llama: Path, cache_dir: Path
) -> None:
    engine = make_engine(tiny_llama, cache_dir)
    payload = export(engine, prompt_of(20))
    payload.first_logprobs = TokenLogprobs(payload.first_token_id, -0.5, 1, (7, 9), (-0.5, -2.0))
    # Values exact in float32, as the engine's are.
    payload.prompt_logprobs = [None] + [
        TokenLogprobs(t, -float(i), 2, (3,), (-0.125,)) for i, t in enumerate(payload.token_ids[1:])
    ]
    header, arrays = payload_to_wire(payload, "r3", "raw", bytes(16))
    rebuilt = wire_to_payload(ReceivedTransfer(header, arrays), payload.token_ids, engine.layout)
    assert rebuilt.first_logprobs == payload.first_logprobs
    assert rebuilt.prompt_logprobs == payload.prompt_logprobs
    # A logprob pair that does not pair up (ids of another width) is refused.
    arrays[-1] = arrays[-1][:, :2].copy()
    with pytest.raises(KvImportError):
        wire_to_payload(ReceivedTransfer(header, arrays), payload.token_ids, engine.layout)
