"""Hybrid hand-off: prefill on engine A, export MLA latent rows and KDA states, import on B."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvImportError, KvPayload, LinearState
from prfaas.kvcache.hybrid import HybridKVCacheManager
from prfaas.kvcache.spec import kv_bytes
from tests.engine.hybrid_helpers import (
    PATTERNS,
    greedy,
    kimi_engine,
    prompt_of,
    run,
    save_kimi_checkpoint,
)

MAX_TOKENS = 16


# Tiny tensors: intra-op threads only add synchronisation (and stall on shared cores).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path
) -> tuple[Engine, Engine, Engine]:
    folder = save_kimi_checkpoint(tmp_path_factory.mktemp("kimi-1to1"), *PATTERNS["1to1_moe"])
    return (
        kimi_engine(folder, cache_dir),
        kimi_engine(folder, cache_dir),
        kimi_engine(folder, cache_dir),
    )


def prefill_export(engine: Engine, prompt: list[int]) -> KvPayload:
    req = engine.add_request(prompt, greedy(MAX_TOKENS), prefill_only=True)
    while req.status.value != "sending_kv":
        engine.step()
        engine.check_integrity()
    payload = engine.export_kv(req.request_id)
    engine.release(req.request_id)
    engine.check_integrity()
    return payload


def import_decode(engine: Engine, payload: KvPayload) -> list[int]:
    req = engine.import_request(payload, greedy(MAX_TOKENS))
    while engine.has_unfinished():
        engine.step()
        engine.check_integrity()
    return list(req.output_token_ids)


def _free_slots(engine: Engine) -> int:
    assert isinstance(engine.kv, HybridKVCacheManager)
    return engine.kv.states.num_free_slots


@pytest.mark.parametrize("prompt_len", [5, 16, 31, 48, 77])
def test_handoff_matches_one_engine(
    engines: tuple[Engine, Engine, Engine], prompt_len: int
) -> None:
    a, b, ref = engines
    prompt = prompt_of(prompt_len, seed=prompt_len)
    payload = prefill_export(a, prompt)
    # Two MLA layers of 24-wide latent rows, two KDA layers of fixed-size state.
    assert [len(payload.kv), len(payload.latent), len(payload.states)] == [0, 2, 2]
    assert payload.latent[0].shape == (prompt_len, 24)
    assert payload.kv_bytes == kv_bytes(a.layer_specs, prompt_len)  # the planner's function
    assert import_decode(b, payload) == run(ref, [prompt], MAX_TOKENS)[0]
    for e in engines:
        e.check_integrity()
        assert e.kv.usage == 0.0


def test_handoff_after_prefix_cache_hit(engines: tuple[Engine, Engine, Engine]) -> None:
    a, b, ref = engines
    shared = prompt_of(48, seed=50)
    prefill_export(a, shared + [9, 10, 11])
    prompt = shared + [12, 13, 14, 15, 16]
    req = a.add_request(prompt, greedy(MAX_TOKENS), prefill_only=True)
    while req.status.value != "sending_kv":
        a.step()
    assert req.num_cached_tokens == 48  # three MLA blocks and the KDA snapshot at 48
    payload = a.export_kv(req.request_id)
    a.release(req.request_id)
    assert import_decode(b, payload) == run(ref, [prompt], MAX_TOKENS)[0]


def test_full_blocks_stay_cached_and_the_tail_block_is_freed(
    engines: tuple[Engine, Engine, Engine],
) -> None:
    a = engines[0]
    assert isinstance(a.kv, HybridKVCacheManager)
    a.kv.reset_cache()
    req = a.add_request(prompt_of(77, seed=80), greedy(MAX_TOKENS), prefill_only=True)
    while req.status.value != "sending_kv":
        a.step()
    # 4 full blocks (prefix-cache blocks, registered) + the 13-token tail (a transfer block).
    assert len(a.kv.block_table(req.request_id)) == 5
    assert a.kv.pool.num_cached == 4
    a.export_kv(req.request_id)
    a.release(req.request_id)
    assert a.kv.usage == 0.0  # the transfer block is back in the pool ...
    assert a.kv.pool.num_cached == 4  # ... and the prefix-cache blocks stay reusable
    a.check_integrity()


def test_named_tensors_round_trip(engines: tuple[Engine, Engine, Engine]) -> None:
    a, b, ref = engines
    prompt = prompt_of(23, seed=90)
    payload = prefill_export(a, prompt)
    named = payload.named_tensors()
    assert [(n, per_token) for n, per_token, _ in named] == [
        ("L0.recurrent", False),
        ("L0.conv", False),
        ("L1.latent", True),
        ("L2.recurrent", False),
        ("L2.conv", False),
        ("L3.latent", True),
    ]
    tensors = {name: t.clone() for name, _, t in named}
    rebuilt = KvPayload.from_named_tensors(
        payload.model_fingerprint,
        prompt,
        payload.first_token_id,
        payload.dtype,
        payload.layout,
        tensors,
    )
    assert rebuilt.kv_bytes == payload.kv_bytes
    assert import_decode(b, rebuilt) == run(ref, [prompt], MAX_TOKENS)[0]
    del tensors["L2.conv"]
    with pytest.raises(KvImportError, match="missing"):
        KvPayload.from_named_tensors("", prompt, 0, payload.dtype, payload.layout, tensors)


def _with_state(payload: KvPayload, i: int, **changes: torch.Tensor) -> KvPayload:
    states = list(payload.states)
    states[i] = dataclasses.replace(states[i], **changes)
    return dataclasses.replace(payload, states=states)


def test_bad_payloads_are_refused_and_nothing_leaks(engines: tuple[Engine, Engine, Engine]) -> None:
    a, b, _ = engines
    payload = prefill_export(a, prompt_of(37, seed=60))
    s = payload.states[1]
    bad = {
        "recurrent shape": _with_state(payload, 1, recurrent=s.recurrent[:, :-1]),
        "recurrent dtype": _with_state(payload, 1, recurrent=s.recurrent.double()),
        "conv shape": _with_state(payload, 0, conv=s.conv[:-1]),
        "conv dtype": _with_state(payload, 0, conv=s.conv.half()),
        "missing state": dataclasses.replace(payload, states=payload.states[:1]),
        "latent shape": dataclasses.replace(
            payload, latent=[payload.latent[0][:-1], payload.latent[1]]
        ),
        "dense kv": dataclasses.replace(payload, kv=[(payload.latent[0], payload.latent[0])]),
    }
    blocks, slots = b.kv.num_free_blocks, _free_slots(b)
    for name, p in bad.items():
        with pytest.raises(KvImportError):
            b.import_request(p, greedy(MAX_TOKENS))
        b.check_integrity()
        assert (b.kv.num_free_blocks, _free_slots(b)) == (blocks, slots), name
        assert not b.has_unfinished(), name
    assert isinstance(payload.states[0], LinearState)


def test_reserved_request_lands_or_falls_back(engines: tuple[Engine, Engine, Engine]) -> None:
    a, b, ref = engines
    prompt = prompt_of(29, seed=70)
    expected = run(ref, [prompt], MAX_TOKENS)[0]
    payload = prefill_export(a, prompt)
    landed = b.reserve_for_kv(prompt, greedy(MAX_TOKENS))
    b.land_kv(landed.request_id, payload)
    failed = b.reserve_for_kv(prompt, greedy(MAX_TOKENS))
    b.fail_kv(failed.request_id)  # the transfer failed: prefill it here instead
    while b.has_unfinished():
        b.step()
        b.check_integrity()
    assert landed.output_token_ids == failed.output_token_ids == expected
    assert b.kv.usage == 0.0
