"""Layer-wise overlap benchmark: time from the prefill command to the KV landed on a
receiver, whole payload (prefill, then send) vs layer-wise (each layer sent while the
prefill computes the next ones), through a rate-capped link on localhost.

The serving path only streams layer by layer; the whole-payload path lives here alone, to
compare against: the prefill runs synchronously on the engine thread (``AsyncEngine.call``
with ``whole_prefill``, what ``LLM.prefill`` does), then ``KvSender.send`` ships the payload.

    .venv/bin/python dev/overlap.py [--lengths 512 2048] \
        [--rate-gbps R] [--repeats 2] [--chunk 2048] [--json results.json]

The model is the embedded default (SmolLM2-135M, ``prfaas.model.default``). Without
``--rate-gbps`` each prompt length gets the cap at which sending its KV takes about as
long as its prefill (measured first): where overlap matters most. Each row is the best of
``--repeats`` runs (prefix caching off, so every run computes the whole prompt); prefill,
sender and receiver share this process and its cores, so on a loaded machine compare the
rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prfaas.config import EngineConfig
from prfaas.engine.async_engine import AsyncEngine
from prfaas.engine.engine import Engine
from prfaas.engine.handoff import KvPayload
from prfaas.engine.request import RequestStatus
from prfaas.engine.sampling_params import SamplingParams
from prfaas.messages import KvTarget, PrefillCommand, SamplingSpec
from prfaas.prefill.kv_export import payload_to_wire
from prfaas.prefill.role import LinkSettings, PrefillRole
from prfaas.transfer.config import LinkConfig, ReceiverConfig
from prfaas.transfer.errors import TransferError
from prfaas.transfer.link import Link
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.sender import KvSender
from prfaas.transfer.tls import PLAINTEXT

LINK = "bench"


@dataclass(frozen=True)
class Row:
    tokens: int
    kv_mb: float
    cap_gbps: float
    prefill_s: float  # prefill alone, no transfer
    whole_s: float  # command to KV landed, whole payload
    layerwise_s: float  # command to KV landed, layer by layer
    ideal_s: float  # max(prefill, transfer at the cap): what full overlap would give

    @property
    def speedup(self) -> float:
        return self.whole_s / self.layerwise_s


def whole_prefill(engine: Engine, prompt: list[int], request_id: str) -> KvPayload:
    """Prefill one prompt to the end on the engine (its thread), export the whole payload,
    free the blocks."""
    req = engine.add_request(prompt, SamplingParams(max_tokens=1), request_id, prefill_only=True)
    while req.status is not RequestStatus.SENDING_KV:
        if req.status.is_done:
            raise RuntimeError(f"request {request_id} ended before its KV was ready")
        engine.step()
    try:
        return engine.export_kv(request_id)
    finally:
        engine.release(request_id)


class Completed:
    """A ReceiveListener: the instant each transfer was complete on the receiver."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.cond = threading.Condition()

    def on_layer(self, request_id: str, layer: int) -> None:
        pass

    def on_complete(self, request_id: str) -> None:
        with self.cond:
            self.at[request_id] = time.monotonic()
            self.cond.notify_all()

    def on_failed(self, request_id: str, error: TransferError) -> None:
        pass


class Bench:
    def __init__(self, engine: AsyncEngine, fingerprint: str, chunk: int) -> None:
        self.engine = engine
        self.completed = Completed()
        self.receiver = KvReceiver(
            ReceiverConfig(fingerprint=bytes.fromhex(fingerprint)),
            tls=PLAINTEXT,
            listener=self.completed,
        ).start()
        self.vocab = int(engine.tokenizer.vocab_size)
        self.rng = np.random.default_rng(0)
        self.ids = 0

    def prompt(self, n: int) -> list[int]:
        return [int(t) for t in self.rng.integers(10, self.vocab - 10, n)]

    def next_id(self) -> str:
        self.ids += 1
        return f"b{self.ids}"

    async def prefill_s(self, n: int) -> tuple[float, int]:
        """Seconds of a prefill alone, and its KV bytes."""
        start = time.monotonic()
        prompt, request_id = self.prompt(n), self.next_id()
        payload = await self.engine.call(lambda e: whole_prefill(e, prompt, request_id))
        return time.monotonic() - start, payload.kv_bytes

    async def whole_s(self, n: int, cap_gbps: float) -> float:
        """Prefill to the end, then send the whole payload through a link capped at
        ``cap_gbps``: command to KV complete on the receiver."""
        sender = KvSender(Link(LinkConfig(LINK, cap_gbps, connections=1)), tls=PLAINTEXT)
        prompt, request_id = self.prompt(n), self.next_id()
        start = time.monotonic()
        payload = await self.engine.call(lambda e: whole_prefill(e, prompt, request_id))
        header, arrays = payload_to_wire(payload, request_id, "raw", bytes(16))  # not checked
        await asyncio.to_thread(sender.send, self.receiver.address, header, arrays)
        return self._landed(request_id) - start

    def _landed(self, request_id: str) -> float:
        with self.completed.cond:  # on_complete runs just after the ACK: wait for it
            self.completed.cond.wait_for(lambda: request_id in self.completed.at, 10.0)
        self.receiver.release(request_id)
        return self.completed.at[request_id]

    async def layerwise_s(self, n: int, cap_gbps: float) -> float:
        """The serving path: command to KV complete on the receiver, each layer sent as the
        prompt's last chunk computes it, through a link capped at ``cap_gbps``."""
        role = PrefillRole(self.engine, LinkSettings({LINK: cap_gbps}), None)
        host, port = self.receiver.address
        cmd = PrefillCommand(
            request_id=self.next_id(),
            prompt_token_ids=self.prompt(n),
            params=SamplingSpec(max_tokens=1, temperature=0.0),
            tenant_salt_hex="",
            target=KvTarget(host=host, port=port, link=LINK),
            deadline_s=600.0,
        )
        start = time.monotonic()
        result = await role.run(cmd)
        if not result.ok:
            raise RuntimeError(f"hand-off failed: {result.error}")
        return self._landed(cmd.request_id) - start


async def measure(args: argparse.Namespace) -> list[Row]:
    config = EngineConfig(
        model=None,
        enable_prefix_caching=False,
        max_num_batched_tokens=args.chunk,
        kv_cache_memory_gb=1.0,
    )
    engine = Engine(config)
    async_engine = AsyncEngine(engine)
    async_engine.start()
    bench = Bench(async_engine, engine.fingerprint, args.chunk)
    rows = []
    try:
        await bench.prefill_s(64)  # warm-up
        for n in args.lengths:
            prefill_s, kv_bytes = min([await bench.prefill_s(n) for _ in range(args.repeats)])
            cap = args.rate_gbps or kv_bytes * 8 / prefill_s / 1e9
            whole = min([await bench.whole_s(n, cap) for _ in range(args.repeats)])
            layer = min([await bench.layerwise_s(n, cap) for _ in range(args.repeats)])
            ideal = max(prefill_s, kv_bytes * 8 / cap / 1e9)
            rows.append(Row(n, kv_bytes / 1e6, cap, prefill_s, whole, layer, ideal))
            print(_line(rows[-1]), flush=True)
    finally:
        await async_engine.shutdown()
        bench.receiver.close()
    return rows


HEADER = (
    f"{'tokens':>6} {'KV MB':>7} {'cap Gb/s':>8} {'prefill s':>9} {'whole s':>8} "
    f"{'layer s':>8} {'ideal s':>8} {'speedup':>7}"
)


def _line(r: Row) -> str:
    return (
        f"{r.tokens:>6} {r.kv_mb:>7.1f} {r.cap_gbps:>8.3f} {r.prefill_s:>9.2f} "
        f"{r.whole_s:>8.2f} {r.layerwise_s:>8.2f} {r.ideal_s:>8.2f} {r.speedup:>6.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--rate-gbps", type=float, default=None, help="link cap (default: match)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=2048, help="max_num_batched_tokens")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    print(HEADER, flush=True)
    rows = asyncio.run(measure(args))
    if args.json is not None:
        out = [asdict(r) | {"speedup": r.speedup} for r in rows]
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
