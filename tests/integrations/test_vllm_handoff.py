"""vLLM -> vLLM hand-off through prfaas's connector: two vLLM engines in two processes, the
KV over real TCP with mutual TLS, HMAC auth, pacing and a lossless codec.

The prefill instance computes each prompt (max_tokens=1) and pushes its KV; the decode
instance loads it and generates 16 greedy tokens, which must equal the tokens of one vLLM
engine computing the whole prompt itself (the prefill instance again, with a cache salt
that rules out any prefix hit). Each instance appends one JSON line per ended hand-off
(events.py): that is how the test knows the KV was really loaded, not silently recomputed.
The engines serve the vLLM tier's tiny byte-level Llama (tests/vllm_deployment.py), token-id
prompts over its byte tokens: none of the connector's paths checked here (block boundaries,
a prefix hit, the faults) depends on the model's size, and the tiny model's jobs take
seconds where SmolLM2's took minutes on 2 cores (docs/vllm.md, "Tests"). Runs in the vLLM
tier of `make test`; skipped where vLLM is not installed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integrations.vllm_procs import free_port, read_events, require_vllm, start, wait_for

require_vllm()

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the start-up and run bounds below

BLOCK = 32  # vllm_instance.ENGINE_ARGS["block_size"]
MAX_TOKENS = 16
# The decode instance waits for its first transfer while the prefill instance still sends
# two others: the first landed 0.5 s after the start here at load 12, the engines warm
# (vllm_instance.py: a cold engine's first request with logprobs took 15 s). MISSING
# waits it out.
LOAD_TIMEOUT_S = 10.0
START_TIMEOUT_S = 480.0
RUN_TIMEOUT_S = 600.0  # a bound only: the jobs took 27 s here at load 12
# name -> (step, length): a token-id prompt over the byte tokens (ids 5..254) with its own
# step, so no two prompts share a block: on a block boundary, one past it, one short of it,
# and a prompt that extends "boundary" (a prefix hit on both instances).
PROMPTS = {"boundary": (3, 2 * BLOCK), "off_by_one": (7, 3 * BLOCK + 1)}
PROMPTS |= {"short_of": (11, 3 * BLOCK - 1), "prefix_hit": (29, 5 * BLOCK + 7)}
MISSING = "missing"  # the decode instance expects it; the prefill instance never sends it
MISFIT = "misfit"  # sent for a shorter prompt than the one the decode instance has
OTHER = "other"  # sent for another prompt of the same length (its tokens reversed)
CUT = "cut"  # a prefill instance that dies mid-transfer (emulated: see cut_transfer)


def token_ids(step: int, n: int) -> list[int]:
    """``n`` byte-token ids in steps of ``step`` (coprime to 250: no repeat within 250)."""
    return [(step * (i + 1)) % 250 + 5 for i in range(n)]


def cut_transfer(folder: Path, port: int, tmp: Path, prompt: list[int]) -> None:
    """A prefill instance killed mid-transfer, as the decode instance sees it: a peer with
    valid credentials streams a third of the layers (zeros), then its connections drop.
    A real vLLM prefill of these prompts takes well under a second, too short to kill it
    reliably at a chosen layer on this machine, hence this stand-in on the real transport.
    The header carries the prompt's true hash, so only the cut makes the load fail."""
    import numpy as np
    import torch

    from prfaas.config import default_cache_dir
    from prfaas.kvcache.hashing import prompt_hash, root_hash
    from prfaas.model.loader import fingerprint_folder, model_fingerprint
    from prfaas.transfer.auth import kv_auth_key
    from prfaas.transfer.config import LinkConfig
    from prfaas.transfer.link import Link
    from prfaas.transfer.messages import DType, LayerEntry, LayerKind, TransferHeader
    from prfaas.transfer.sender import KvSender
    from prfaas.transfer.tls import TlsConfig, client_context

    model = json.loads((folder / "config.json").read_text())
    heads = model["num_key_value_heads"]
    head_dim = model["hidden_size"] // model["num_attention_heads"]
    shape = (len(prompt), heads, head_dim)
    entries = tuple(
        LayerEntry(f"L{i}.{part}", LayerKind.BLOCKS, DType.FLOAT32, shape)
        for i in range(model["num_hidden_layers"])
        for part in ("k", "v")
    )
    # the connector's: the folder's digest at the engines' dtype (float32)
    fingerprint_hex = model_fingerprint(
        fingerprint_folder(folder, default_cache_dir()), torch.float32
    )
    hashed = prompt_hash(prompt, BLOCK, root_hash(fingerprint_hex, b""))
    header = TransferHeader(f"t-{CUT}", bytes.fromhex(fingerprint_hex), "raw", entries, hashed)
    sender = KvSender(
        Link(LinkConfig(connections=1)),
        tls=client_context(TlsConfig.from_dir(tmp / "certs", "prefill")),
        server_name="decode",
        auth_key=kv_auth_key((tmp / "token").read_text().strip()),
    )
    rows = np.zeros(shape, np.float32)
    with sender.open(("127.0.0.1", port), header) as transfer:
        for index in range(len(entries) // 3):
            transfer.send_layer(index, rows)
        time.sleep(0.5)
    # leaving without finish() aborts: every connection is closed mid-payload


@pytest.fixture(scope="module")
def handoff(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from prfaas.transfer.tls import write_certs
    from tests.vllm_deployment import byte_level_checkpoint

    tmp = tmp_path_factory.mktemp("vllm-handoff")
    folder = byte_level_checkpoint(tmp / "bytes")
    prompts = {name: token_ids(step, n) for name, (step, n) in PROMPTS.items()}
    prefix = prompts["boundary"]
    prompts["prefix_hit"] = prefix + prompts["prefix_hit"][len(prefix) :]
    prompts[MISSING] = token_ids(13, 2 * BLOCK + 5)
    prompts[MISFIT] = token_ids(17, 3 * BLOCK + 3)
    prompts[CUT] = token_ids(19, 2 * BLOCK + 9)
    prompts[OTHER] = token_ids(23, 2 * BLOCK + 3)
    assert all(len(prompts[name]) == n for name, (_, n) in PROMPTS.items())
    write_certs(tmp / "certs", ["prefill", "decode"])
    (tmp / "token").write_text("cluster token for the hand-off test\n")
    port = free_port()
    common = {
        "certs_dir": str(tmp / "certs"),
        "auth_token_file": str(tmp / "token"),
        "codec": "raw+lz4",
    }

    def kv(role: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "kv_connector": "PrfaasConnector",
            "kv_connector_module_path": "prfaas.integrations.vllm.connector",
            "kv_role": role,
            "kv_load_failure_policy": "recompute",
            "kv_connector_extra_config": {**common, **extra},
        }

    handed = [n for n in prompts if n not in (MISSING, MISFIT, CUT, OTHER)]
    misfit_send = {
        "name": MISFIT,
        "prompt_token_ids": prompts[MISFIT][: 2 * BLOCK],
        "max_tokens": 1,
        "kv_transfer_params": {
            "prfaas_transfer_id": f"t-{MISFIT}",
            "prfaas_send_to": f"127.0.0.1:{port}",
        },
    }
    other_send = {
        **misfit_send,
        "name": OTHER,
        "prompt_token_ids": prompts[OTHER][::-1],
        "kv_transfer_params": {
            "prfaas_transfer_id": f"t-{OTHER}",
            "prfaas_send_to": f"127.0.0.1:{port}",
        },
    }
    prefill_jobs = [misfit_send, other_send] + [
        {
            "name": n,
            "prompt_token_ids": prompts[n],
            "max_tokens": 1,
            "kv_transfer_params": {
                "prfaas_transfer_id": f"t-{n}",
                "prfaas_send_to": f"127.0.0.1:{port}",
            },
        }
        for n in handed
    ]
    alone_jobs = [
        {"name": f"alone-{n}", "prompt_token_ids": p, "max_tokens": MAX_TOKENS, "cache_salt": n}
        for n, p in prompts.items()
    ]
    decode_jobs = [
        {
            "name": n,
            "prompt_token_ids": prompts[n],
            "max_tokens": MAX_TOKENS,
            "kv_transfer_params": {"prfaas_transfer_id": f"t-{n}"},
        }
        for n in [*handed, MISFIT, OTHER, CUT, MISSING]
    ]
    prefill_extra = {"cluster": "prefill", "peer_cluster": "decode", "rate_gbps": 1.0}
    decode_extra = {
        "cluster": "decode",
        "listen_port": port,
        "load_timeout_s": LOAD_TIMEOUT_S,
    }
    started_s = time.monotonic()
    instances = [
        start(
            "decode",
            {
                "model": str(folder),
                "jobs": decode_jobs,
                "kv_transfer_config": kv(
                    "kv_consumer", {**decode_extra, "events_file": str(tmp / "decode.events")}
                ),
            },
            tmp,
        ),
        start(
            "prefill",
            {
                "model": str(folder),
                "jobs": prefill_jobs + alone_jobs,
                "kv_transfer_config": kv(
                    "kv_producer", {**prefill_extra, "events_file": str(tmp / "prefill.events")}
                ),
            },
            tmp,
        ),
    ]
    try:
        wait_for(instances, ready=True, timeout_s=START_TIMEOUT_S)
        ready_s = time.monotonic()
        (tmp / "go").touch()
        cut_transfer(folder, port, tmp, prompts[CUT])
        wait_for(instances, ready=False, timeout_s=RUN_TIMEOUT_S)
        yield {
            "prompts": prompts,
            "decode": json.loads(Path(instances[0].spec["out"]).read_text()),
            "prefill": json.loads(Path(instances[1].spec["out"]).read_text()),
            "load_events": read_events(tmp / "decode.events"),
            "send_events": read_events(tmp / "prefill.events"),
            "start_s": ready_s - started_s,
            "run_s": time.monotonic() - ready_s,
        }
    finally:
        for inst in instances:
            inst.kill()  # its engine processes too, even where the script itself has ended


@pytest.mark.parametrize("name", list(PROMPTS))
def test_decode_after_handoff_equals_one_engine_alone(handoff: dict[str, Any], name: str) -> None:
    alone = handoff["prefill"][f"alone-{name}"]["token_ids"]
    assert len(alone) == MAX_TOKENS
    assert handoff["decode"][name]["token_ids"] == alone
    sent, loaded = handoff["send_events"][f"t-{name}"], handoff["load_events"][f"t-{name}"]
    prompt_len = len(handoff["prompts"][name])
    assert sent["ok"] and sent["num_tokens"] == prompt_len, sent
    assert loaded["ok"], loaded
    # every prompt token but the last came over the link, except a local prefix hit
    local_hit = 2 * BLOCK if name == "prefix_hit" else 0
    assert loaded["num_tokens"] == prompt_len - 1 - local_hit


def test_transfer_that_never_comes_is_recomputed_within_the_deadline(
    handoff: dict[str, Any],
) -> None:
    assert (
        handoff["decode"][MISSING]["token_ids"]
        == handoff["prefill"][f"alone-{MISSING}"]["token_ids"]
    )
    event = handoff["load_events"][f"t-{MISSING}"]
    assert not event["ok"] and "not complete" in event["error"], event
    assert LOAD_TIMEOUT_S <= event["seconds"] < LOAD_TIMEOUT_S + 5
    assert f"t-{MISSING}" not in handoff["send_events"]


@pytest.mark.parametrize("name", [MISFIT, OTHER])
def test_transfer_for_another_prompt_is_refused_and_recomputed(
    handoff: dict[str, Any], name: str
) -> None:
    """The decode instance waits on the right transfer id, but the KV that comes under it
    was computed for a shorter prompt (MISFIT) or for the same tokens reversed (OTHER: same
    length, so every shape fits and only the prompt hash in the header tells them apart)."""
    alone = handoff["prefill"][f"alone-{name}"]["token_ids"]
    assert handoff["decode"][name]["token_ids"] == alone
    assert handoff["send_events"][f"t-{name}"]["ok"]  # delivered, verified ...
    event = handoff["load_events"][f"t-{name}"]
    assert not event["ok"] and "KV for another prompt" in event["error"], event  # ... unused


def test_prefill_dying_mid_transfer_is_recomputed(handoff: dict[str, Any]) -> None:
    alone = handoff["prefill"][f"alone-{CUT}"]["token_ids"]
    assert handoff["decode"][CUT]["token_ids"] == alone  # the zeros that landed were not used
    event = handoff["load_events"][f"t-{CUT}"]
    assert not event["ok"] and event["seconds"] < LOAD_TIMEOUT_S + 5, event


def test_no_receive_buffer_is_held_after_the_loads(handoff: dict[str, Any]) -> None:
    events = list(handoff["load_events"].values())
    assert len(events) == len(handoff["decode"])
    assert events[-1]["held_bytes"] == 0
    print(f"engines ready in {handoff['start_s']:.0f}s, jobs ran in {handoff['run_s']:.0f}s")
