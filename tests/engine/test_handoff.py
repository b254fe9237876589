"""KV hand-off: prefill on engine A, export, import on engine B, decode."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from prfaas.engine.engine import Engine
from prfaas.engine.handoff import FingerprintMismatchError, KvImportError, KvPayload
from prfaas.engine.sampling_params import SamplingParams
from prfaas.kvcache.spec import kv_bytes
from tests.engine.helpers import make_engine

GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def generate_alone(engine: Engine, prompt: list[int]) -> list[int]:
    req = engine.add_request(prompt, GREEDY)
    while engine.has_unfinished():
        engine.step()
    return list(req.output_token_ids)


def prefill_export(engine: Engine, prompt: list[int]) -> KvPayload:
    req = engine.add_request(prompt, GREEDY, prefill_only=True)
    while req.status.value != "sending_kv":
        engine.step()
    payload = engine.export_kv(req.request_id)
    engine.release(req.request_id)
    engine.check_integrity()
    return payload


def import_decode(engine: Engine, payload: KvPayload) -> list[int]:
    req = engine.import_request(payload, GREEDY)
    while engine.has_unfinished():
        engine.step()
        engine.check_integrity()
    return list(req.output_token_ids)


@pytest.fixture(scope="module")
def engines(tiny_llama: Path, cache_dir: Path) -> tuple[Engine, Engine, Engine]:
    return (
        make_engine(tiny_llama, cache_dir),
        make_engine(tiny_llama, cache_dir),
        make_engine(tiny_llama, cache_dir),
    )


@pytest.mark.parametrize("prompt_len", [5, 16, 31, 48, 77])
def test_handoff_matches_one_engine(
    engines: tuple[Engine, Engine, Engine], prompt_len: int
) -> None:
    a, b, ref = engines
    prompt = [(11 * i + prompt_len) % 250 + 3 for i in range(prompt_len)]
    payload = prefill_export(a, prompt)
    assert payload.num_tokens == prompt_len
    # (num_tokens, num_kv_heads=2, head_dim=16) x K,V x 2 layers x 4 bytes
    assert payload.kv_bytes == prompt_len * 2 * 16 * 2 * 2 * 4
    assert payload.kv_bytes == kv_bytes(a.layer_specs, prompt_len)  # the planner's function
    assert import_decode(b, payload) == generate_alone(ref, prompt)
    for e in engines:
        e.check_integrity()
        assert e.kv.usage == 0.0


def test_handoff_after_prefix_cache_hit(engines: tuple[Engine, Engine, Engine]) -> None:
    a, b, ref = engines
    shared = [(5 * i) % 250 + 3 for i in range(48)]
    prefill_export(a, shared + [9, 10, 11])
    prompt = shared + [12, 13, 14, 15, 16]
    req = a.add_request(prompt, GREEDY, prefill_only=True)
    while req.status.value != "sending_kv":
        a.step()
    assert req.num_cached_tokens == 48  # three full blocks came from the cache
    payload = a.export_kv(req.request_id)
    a.release(req.request_id)
    assert import_decode(b, payload) == generate_alone(ref, prompt)


@pytest.mark.parametrize("prompt_len", [1, 16, 33])
def test_payload_without_first_token_computes_the_last_prompt_token_here(
    engines: tuple[Engine, Engine, Engine], prompt_len: int
) -> None:
    """What a vLLM prefill instance sends: the KV alone. The decode engine keeps every row
    but the last, computes the last prompt token itself and samples the first token."""
    a, b, ref = engines
    prompt = [(7 * i + prompt_len) % 250 + 3 for i in range(prompt_len)]
    payload = dataclasses.replace(prefill_export(a, prompt), first_token_id=None)
    req = b.import_request(payload, GREEDY)
    assert req.num_computed_tokens == prompt_len - 1 and not req.output_token_ids
    while b.has_unfinished():
        b.step()
        b.check_integrity()
    assert list(req.output_token_ids) == generate_alone(ref, prompt)
    for e in engines:
        assert e.kv.usage == 0.0


def _corrupt(payload: KvPayload, **changes: object) -> KvPayload:
    return dataclasses.replace(payload, **changes)  # type: ignore[arg-type]


def test_bad_payloads_are_refused_and_nothing_leaks(engines: tuple[Engine, Engine, Engine]) -> None:
    a, b, _ = engines
    payload = prefill_export(a, list(range(3, 40)))
    k, v = payload.kv[0]
    bad = {
        "fingerprint": (_corrupt(payload, model_fingerprint="0" * 32), FingerprintMismatchError),
        "shape": (_corrupt(payload, kv=[(k[:-1], v[:-1]), *payload.kv[1:]]), KvImportError),
        "dtype": (_corrupt(payload, kv=[(k.half(), v.half()), *payload.kv[1:]]), KvImportError),
        "layers": (_corrupt(payload, kv=payload.kv[:1], layout=payload.layout[:1]), KvImportError),
        "token": (_corrupt(payload, first_token_id=10**6), KvImportError),
        "empty": (_corrupt(payload, token_ids=[]), KvImportError),
    }
    free_before = b.kv.num_free_blocks
    for name, (p, err) in bad.items():
        with pytest.raises(err):
            b.import_request(p, GREEDY)
        b.check_integrity()
        assert b.kv.num_free_blocks == free_before, name
        assert not b.has_unfinished(), name


def test_reserved_request_falls_back_to_local_prefill(
    engines: tuple[Engine, Engine, Engine],
) -> None:
    a, b, ref = engines
    prompt = list(range(20, 70))
    req = b.reserve_for_kv(prompt, GREEDY)
    assert req.status.value == "waiting_for_kv"
    b.check_integrity()
    b.fail_kv(req.request_id)  # the transfer failed: compute it here instead
    while b.has_unfinished():
        b.step()
    assert req.output_token_ids == generate_alone(ref, prompt)
    b.check_integrity()
    assert torch.is_tensor(prefill_export(a, prompt).kv[0][0])


@pytest.mark.parametrize("prefix_len", [16, 40])
def test_pulled_prefix_is_a_cache_hit_with_identical_tokens(
    engines: tuple[Engine, Engine, Engine], prefix_len: int
) -> None:
    """A cross-cluster cache pull: engine A exports a prefix's KV, engine B keeps it only as
    prefix cache; B's later prefill of a longer prompt hits its full blocks and decodes the
    same tokens as an engine that computed everything."""
    a, b, ref = engines
    prompt = [(7 * i + prefix_len) % 240 + 5 for i in range(prefix_len + 21)]
    salt = b"tenant-pull"
    req = a.add_request(prompt[:prefix_len], GREEDY, prefill_only=True, tenant_salt=salt)
    while req.status.value != "sending_kv":
        a.step()
    payload = a.export_kv(req.request_id)
    a.release(req.request_id)
    block = b.kv.block_size
    free_before = b.kv.num_free_blocks
    assert b.import_prefix(payload, tenant_salt=salt) == prefix_len // block * block
    assert not b.has_unfinished()  # nothing streams: the request ended at once
    b.check_integrity()
    assert b.kv.num_free_blocks == free_before  # cached blocks stay evictable, none leased
    hit = b.add_request(prompt, GREEDY, tenant_salt=salt)
    while b.has_unfinished():
        b.step()
    assert hit.num_cached_tokens == prefix_len // block * block
    other = b.add_request(prompt, GREEDY, tenant_salt=b"another-tenant")
    while b.has_unfinished():
        b.step()
    assert other.num_cached_tokens == 0  # the pulled prefix is salted to its tenant
    assert list(hit.output_token_ids) == generate_alone(ref, prompt)
    b.check_integrity()
