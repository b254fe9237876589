"""Stale weights: after a worker restarts with other weights, no old KV is served. The
fleet refuses a mixed fleet, old kv-index entries are never matched (the model fingerprint
is in the root block hash), and a transfer carrying the old fingerprint is refused by the
new receiver with nothing reserved."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from prfaas.config import EngineConfig
from prfaas.dispatch.cluster import ClusterBackend
from prfaas.dispatch.config import BackendSettings
from prfaas.engine.sampling_params import SamplingParams
from prfaas.gateway.backend import GenerationRequest
from prfaas.gateway.fleet import FingerprintConflictError, WorkerFleet
from prfaas.kvcache.hashing import block_hashes, root_hash
from prfaas.messages import KvTarget, PrefillCommand
from prfaas.router.kv_index import KvIndex
from prfaas.router.policies import POLICIES
from prfaas.router.router import Router, RouterConfig
from prfaas.router.types import RouterState
from prfaas.sampling import to_spec
from prfaas.transfer.errors import TransferTimeout
from prfaas.worker import Worker, WorkerConfig
from prfaas.worker.reference import ReferenceEngine

TOKEN = "stale-test-token"
SALT = b"\x07" * 32
PROMPT = [(13 * i) % 200 + 5 for i in range(70)]  # 4 full blocks of 16
PARAMS = SamplingParams(max_tokens=2, temperature=0.0)


@pytest.fixture(scope="module")
def new_weights(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint retrained: same architecture, one weight matrix changed."""
    folder = tmp_path_factory.mktemp("tiny-llama-v2")
    for f in tiny_llama.iterdir():
        shutil.copy(f, folder / f.name)
    [weights] = folder.glob("*.safetensors")
    tensors = load_file(weights)
    name = next(n for n, t in tensors.items() if t.dim() == 2)
    generator = torch.Generator().manual_seed(1)
    tensors[name] = tensors[name] + torch.randn(tensors[name].shape, generator=generator)
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def worker(name: str, role: str, model: Path, cache_dir: Path) -> Worker:
    engine = EngineConfig(model=str(model), cache_dir=cache_dir, num_kv_blocks=64)
    return Worker(
        WorkerConfig(
            name=name,
            cluster="local",
            role=role,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=1,
            gateway_urls=("http://127.0.0.1:1",),
            cluster_token=TOKEN,
            engine=engine,
        )
    )


def ref(w: Worker) -> ReferenceEngine:
    """The reference engine's parts: its AsyncEngine and KV receiver, driven by hand here."""
    assert isinstance(w.engine, ReferenceEngine)
    return w.engine


def heartbeat(fleet: WorkerFleet, w: Worker) -> None:
    """Deliver the worker's pending cache events as its heartbeat loop would."""
    w.collect_events()
    gateway = w.config.gateway_urls[0]
    for batch in w.events.pending(gateway, w.epoch) or [None]:
        assert fleet.heartbeat(w.heartbeat(batch))
        if batch is not None:
            w.events.ack(gateway, w.epoch, batch.seq)


async def prefill_to(prefill: Worker, decode: Worker, request_id: str) -> tuple[bool, str]:
    host, port = ref(decode).receiver.address
    cmd = PrefillCommand(
        request_id=request_id,
        prompt_token_ids=PROMPT,
        params=to_spec(PARAMS),
        tenant_salt_hex=SALT.hex(),
        target=KvTarget(host=host, port=port),
        deadline_s=20.0,
    )
    result = await prefill.engine.prefill(cmd)
    return result.ok, result.error or ""


def test_a_restart_with_other_weights_serves_no_old_kv(
    tiny_llama: Path, new_weights: Path, cache_dir: Path
) -> None:
    asyncio.run(restart_with_other_weights(tiny_llama, new_weights, cache_dir))


async def restart_with_other_weights(tiny_llama: Path, new_weights: Path, cache_dir: Path) -> None:
    kv_index = KvIndex()
    fleet = WorkerFleet({"local": "pd"}, kv_index, heartbeat_timeout_s=0.5)
    router = Router(
        RouterConfig(block_tokens=16),
        POLICIES["prfaas"](),
        fleet,
        kv_index,
        RouterState(32.0, "scarce"),
    )
    backend = ClusterBackend(BackendSettings("tiny", TOKEN), fleet, router, None, 512, 16)
    request = GenerationRequest("r", "acme", SALT, PROMPT, PARAMS)

    old_p, old_d = (
        worker("p0", "prefill", tiny_llama, cache_dir),
        worker("d0", "decode", tiny_llama, cache_dir),
    )
    ref(old_d).receiver.start()
    ref(old_p).engine.start()
    for w in (old_p, old_d):
        fleet.register(w.info())
    ok, error = await prefill_to(old_p, old_d, "warm")
    assert ok, error
    ref(old_d).receiver.release("warm")
    heartbeat(fleet, old_p)
    assert (
        backend.route(request, backend.block_hashes(request)).cached_tokens == 64
    )  # the old weights' blocks are indexed

    # p0 restarts with new weights while d0 still serves the old ones: refused.
    new_p = worker("p0", "prefill", new_weights, cache_dir)
    assert new_p.fingerprint != old_p.fingerprint
    with pytest.raises(FingerprintConflictError):
        fleet.register(new_p.info())
    # Under the new fingerprint the same prompt hashes to other blocks: none of the old
    # entries can match, whatever the index still holds.
    old_hashes = block_hashes(PROMPT, 16, root_hash(old_p.fingerprint, SALT))
    new_hashes = block_hashes(PROMPT, 16, root_hash(new_p.fingerprint, SALT))
    assert not set(old_hashes) & set(new_hashes)
    assert kv_index.prefix_blocks(old_hashes) and not kv_index.prefix_blocks(new_hashes)

    # d0 restarts with the new weights; the old p0 (not restarted yet) ships KV to it: the
    # receiver refuses the old fingerprint and holds nothing.
    ref(old_d).receiver.close()
    new_d = worker("d0", "decode", new_weights, cache_dir)
    ref(new_d).receiver.start()
    try:
        ok, error = await prefill_to(old_p, new_d, "stale")
        assert not ok and "model" in error, error
        assert ref(new_d).receiver.num_transfers == 0 and ref(new_d).receiver.allocated_bytes == 0
        with pytest.raises(TransferTimeout):  # nothing landed: the decode side falls back
            ref(new_d).receiver.wait("stale", 0.5)

        # Once the old workers stop heartbeating, the new fleet registers and routes the
        # same prompt with nothing cached: the old entries are gone and could not match.
        await asyncio.sleep(0.6)
        for w in (new_d, new_p):
            fleet.register(w.info())
        assert fleet.fingerprint == new_p.fingerprint
        heartbeat(fleet, new_p)
        assert backend.route(request, backend.block_hashes(request)).cached_tokens == 0
        assert not kv_index.prefix_blocks(old_hashes)
    finally:
        await ref(old_p).engine.shutdown()
        ref(new_d).receiver.close()
        for w in (old_p, new_p):
            ref(w).receiver.close()
