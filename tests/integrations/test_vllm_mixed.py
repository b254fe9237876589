"""KV between the two engines: the reference engine prefills and a vLLM instance decodes, and
the other way round, over real TCP with mutual TLS, HMAC auth and a lossless codec.

One vLLM engine (a process, the connector as ``kv_both``) and one reference engine (this
process, behind the worker seam: ``ReferenceEngine``, the roles a prfaas worker runs, at the
fleet's 32-token blocks) serve both directions. The decoding engine's 16 greedy tokens must
equal its own tokens for the prompt computed alone (a tenant salt rules out a prefix hit);
that the KV really landed is read from the logs, not assumed: the vLLM connector's hand-off
events and the reference decode's first event (no prompt token served from its own cache or
computed beyond the last one, no fallback). The two engines alone are compared too: where
their greedy tokens part, the test names the position and both engines' logit gaps there.
Runs in the vLLM venv (`make test-vllm`); skipped where vLLM is not installed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.vllm_procs import free_port, read_events, require_vllm, start, wait_for

require_vllm()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the start-up and run bounds below

BLOCK = 32  # vllm_instance.ENGINE_ARGS["block_size"]; the reference engine runs the same
MAX_TOKENS = 16
START_TIMEOUT_S = 900.0  # an engine start took over 8 min here at load average 20
RUN_TIMEOUT_S = 300.0
DEADLINE_S = 120.0  # each hand-off's, on both sides
TEXT = (
    "The transfer layer moves every attention layer of a prompt's key-value cache from the "
    "instance that computed it to the one that will decode, while the prefill still runs. "
    "Each link is paced, authenticated and encrypted, and a transfer that fails or arrives "
    "too late is recomputed by the decoding instance, so no request is ever lost to the wire. "
)
# name -> (first token, prompt length): a prompt on a block boundary and one off it, per
# direction (distinct starts: no prefix shared).
R2V = {"r2v_boundary": (0, 2 * BLOCK), "r2v_off": (150, 3 * BLOCK - 1)}
V2R = {"v2r_boundary": (300, 3 * BLOCK), "v2r_off": (450, 2 * BLOCK + 13)}
SALT = "a1"  # the "alone" runs' tenant: no prefix hit on what the hand-offs cached


def greedy(logprobs: int | None = None) -> Any:
    from prfaas.messages import SamplingSpec

    return SamplingSpec(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True, logprobs=logprobs)


async def decode(engine: Any, request_id: str, prompt: list[int], **kw: Any) -> dict[str, Any]:
    """Tokens, the first token event and per-token top-2 logprobs of one decode command."""
    from prfaas.messages import DecodeCommand

    cmd = DecodeCommand(
        request_id=request_id,
        prompt_token_ids=prompt,
        params=kw.pop("params", greedy()),
        deadline_s=DEADLINE_S,
        **kw,
    )
    tokens: list[int] = []
    top2: list[list[tuple[int, float]]] = []
    first: dict[str, Any] | None = None
    async for event in engine.decode(cmd):
        assert event.error is None, event.error
        if event.reserved is not None:
            assert event.reserved, "no blocks held for the incoming KV"
            continue
        if first is None:
            first = event.model_dump()
        tokens += event.token_ids
        for entry in event.logprobs or []:
            top2.append(list(zip(entry.top_token_ids, entry.top_logprobs, strict=True))[:2])
    return {"token_ids": tokens, "first": first, "top2": top2}


async def run_reference(
    engine: Any, prompts: dict[str, list[int]], vllm_port: int
) -> dict[str, Any]:
    """Both directions at once (the vLLM instance runs its jobs meanwhile), then each prompt
    alone on this engine."""
    from prfaas.messages import KvTarget, PrefillCommand, SamplingSpec

    target = KvTarget(
        host="127.0.0.1", port=vllm_port, codec="raw+lz4", tls=True, server_name="vllm"
    )
    sends = [
        engine.prefill(
            PrefillCommand(
                request_id=name,
                prompt_token_ids=prompts[name],
                params=SamplingSpec(max_tokens=1, temperature=0.0),
                tenant_salt_hex="",
                target=target,
                deadline_s=DEADLINE_S,
            )
        )
        for name in R2V
    ]
    lands = [
        decode(engine, name, prompts[name], tenant_salt_hex="", expect_kv=True) for name in V2R
    ]
    results = await asyncio.gather(*sends, *lands)
    out: dict[str, Any] = {"sent": dict(zip(R2V, results[: len(R2V)], strict=True))}
    out["decoded"] = dict(zip(V2R, results[len(R2V) :], strict=True))
    out["alone"] = {
        name: await decode(
            engine,
            f"alone-{name}",
            prompt,
            params=greedy(logprobs=2),
            tenant_salt_hex=SALT,
            expect_kv=False,
        )
        for name, prompt in prompts.items()
    }
    out["fallbacks"] = engine.stats().fallbacks
    out["check"] = await engine.check()
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from transformers import AutoTokenizer

    from prfaas.config import EngineConfig, default_cache_dir
    from prfaas.model.loader import resolve_model_folder
    from prfaas.transfer.auth import kv_auth_key
    from prfaas.transfer.tls import TlsConfig, client_context, server_context, write_certs
    from prfaas.worker.reference import KvSettings, ReferenceEngine

    tmp = tmp_path_factory.mktemp("vllm-mixed")
    folder = resolve_model_folder(None, default_cache_dir())
    ids = AutoTokenizer.from_pretrained(folder)(TEXT * 8)["input_ids"]
    prompts = {name: ids[at : at + n] for name, (at, n) in (R2V | V2R).items()}
    assert all(
        len(p) == n for p, (_, n) in zip(prompts.values(), (R2V | V2R).values(), strict=True)
    )
    write_certs(tmp / "certs", ["reference", "vllm"])
    token = "cluster token for the mixed hand-off test"
    (tmp / "token").write_text(token + "\n")
    vllm_port, reference_port = free_port(), free_port()
    jobs = [  # v2r first: the reference decodes wait for them; r2v's KV waits at vLLM
        {
            "name": name,
            "prompt_token_ids": prompts[name],
            "max_tokens": 1,
            "kv_transfer_params": {
                "prfaas_transfer_id": name,
                "prfaas_send_to": f"127.0.0.1:{reference_port}",
            },
        }
        for name in V2R
    ]
    jobs += [
        {
            "name": name,
            "prompt_token_ids": prompts[name],
            "max_tokens": MAX_TOKENS,
            "kv_transfer_params": {"prfaas_transfer_id": name},
        }
        for name in R2V
    ]
    jobs += [
        {"name": f"alone-{n}", "prompt_token_ids": p, "max_tokens": MAX_TOKENS, "cache_salt": SALT}
        for n, p in prompts.items()
    ]
    kv = {
        "kv_connector": "PrfaasConnector",
        "kv_connector_module_path": "prfaas.integrations.vllm.connector",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {
            "certs_dir": str(tmp / "certs"),
            "cluster": "vllm",
            "peer_cluster": "reference",
            "auth_token_file": str(tmp / "token"),
            "codec": "raw+lz4",
            "listen_port": vllm_port,
            "load_timeout_s": DEADLINE_S,
            "send_timeout_s": DEADLINE_S,
            "events_file": str(tmp / "vllm.events"),
        },
    }
    started_s = time.monotonic()
    # One OpenMP thread (vllm_procs.THREADS): the reference engine computes here meanwhile.
    vllm = start("vllm", {"model": str(folder), "jobs": jobs, "kv_transfer_config": kv}, tmp)
    try:
        tls = TlsConfig.from_dir(tmp / "certs", "reference")
        reference = ReferenceEngine(
            EngineConfig(block_size=BLOCK, dtype="float32", num_threads=1, kv_cache_memory_gb=0.25),
            KvSettings(
                port=reference_port,
                auth_key=kv_auth_key(token),
                tls_server=server_context(tls),
                tls_client=client_context(tls),
            ),
        )
        wait_for([vllm], ready=True, timeout_s=START_TIMEOUT_S)
        ready_s = time.monotonic()

        async def run() -> dict[str, Any]:
            await reference.start()
            try:
                (tmp / "go").touch()
                return await run_reference(reference, prompts, vllm_port)
            finally:
                await reference.stop()

        ours = asyncio.run(run())
        wait_for([vllm], ready=False, timeout_s=RUN_TIMEOUT_S)
        yield {
            "prompts": prompts,
            "reference": ours,
            "vllm": json.loads(Path(vllm.spec["out"]).read_text()),
            "events": read_events(tmp / "vllm.events"),
            "start_s": ready_s - started_s,
            "run_s": time.monotonic() - ready_s,
        }
    finally:
        vllm.kill()  # its engine processes too, even where the script itself has ended


@pytest.mark.parametrize("name", list(R2V))
def test_reference_prefill_then_vllm_decode_equals_vllm_alone(
    mixed: dict[str, Any], name: str
) -> None:
    sent = mixed["reference"]["sent"][name]
    assert sent.ok, sent.error
    loaded = mixed["events"][name]
    assert loaded["ok"], loaded
    # every prompt token but the last came over the link (vLLM computes the last itself)
    assert loaded["num_tokens"] == len(mixed["prompts"][name]) - 1
    alone = mixed["vllm"][f"alone-{name}"]["token_ids"]
    assert len(alone) == MAX_TOKENS
    assert mixed["vllm"][name]["token_ids"] == alone


@pytest.mark.parametrize("name", list(V2R))
def test_vllm_prefill_then_reference_decode_equals_reference_alone(
    mixed: dict[str, Any], name: str
) -> None:
    sent = mixed["events"][name]
    assert sent["ok"] and sent["num_tokens"] == len(mixed["prompts"][name]), sent
    decoded = mixed["reference"]["decoded"][name]
    # the KV landed: nothing served from this engine's cache, nothing computed but the last
    # prompt token (reported as a landing: 0 and 0), and no fallback on this engine
    assert (decoded["first"]["cached_tokens"], decoded["first"]["computed_tokens"]) == (0, 0)
    alone = mixed["reference"]["alone"][name]["token_ids"]
    assert len(alone) == MAX_TOKENS
    assert decoded["token_ids"] == alone


def test_no_fallback_and_nothing_held_on_the_reference_engine(mixed: dict[str, Any]) -> None:
    ours = mixed["reference"]
    assert ours["fallbacks"] == 0
    check = ours["check"]
    assert check.integrity_error is None
    assert (check.kv_landings, check.kv_allocated_bytes, check.kv_awaited) == (0, 0, 0)
    print(f"vLLM ready in {mixed['start_s']:.0f}s, both directions ran in {mixed['run_s']:.0f}s")


def first_divergence(
    ours: dict[str, Any], theirs: dict[str, Any]
) -> tuple[int, float, float] | None:
    """The first position where the two engines' greedy tokens differ, with each engine's
    logit gap there (its top-1 minus top-2 logprob: how close that engine was to the other
    choice); None when all agree."""
    for i, (a, b) in enumerate(zip(ours["token_ids"], theirs["token_ids"], strict=True)):
        if a != b:
            gap_ours = ours["top2"][i][0][1] - ours["top2"][i][1][1]
            gap_theirs = theirs["top2"][i][0][1] - theirs["top2"][i][1][1]
            return i, gap_ours, gap_theirs
    return None


@pytest.mark.parametrize("name", [*R2V, *V2R])
def test_the_two_engines_alone_agree_on_greedy_tokens(mixed: dict[str, Any], name: str) -> None:
    """SmolLM2 fp32 on both: the same 16 greedy tokens, or the divergence is named."""
    ours, theirs = mixed["reference"]["alone"][name], mixed["vllm"][f"alone-{name}"]
    parted = first_divergence(ours, theirs)
    assert parted is None, (
        f"{name}: first divergence at output token {parted[0]}, logit gap there "
        f"{parted[1]:.2e} (reference) / {parted[2]:.2e} (vLLM)"
    )
