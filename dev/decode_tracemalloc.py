"""Python allocations a decode instance keeps as it serves requests (issue #13's RSS creep).

    PYTHONPATH=src .venv/bin/python dev/decode_tracemalloc.py MODEL_FOLDER [REQUESTS]

The reference engine behind the worker seam, in this process: 200 warm-up requests, then
REQUESTS more (half plain decodes, half reservations whose KV "fails", i.e. local
fallbacks), 4 at a time; cache events are drained after each group, as heartbeats do. Prints
peak RSS before/after and the allocations that grew most, by traceback.
"""

import asyncio
import resource
import sys
import tracemalloc

from prfaas.config import EngineConfig
from prfaas.engine.engine import Engine
from prfaas.messages import DecodeCommand, SamplingSpec
from prfaas.worker.reference import KvSettings, ReferenceEngine


async def main(model: str, n: int) -> None:
    eng = Engine(EngineConfig(model=model, num_kv_blocks=64))
    ref = ReferenceEngine(eng.config, KvSettings(), engine=eng)
    await ref.start()

    async def one(i: int, kv: bool) -> None:
        prompt = [(i + 7 * k) % 200 + 5 for k in range(40)]
        cmd = DecodeCommand(
            request_id=f"r{i}",
            prompt_token_ids=prompt,
            params=SamplingSpec(max_tokens=8, temperature=0.0),
            tenant_salt_hex="",
            expect_kv=kv,
            deadline_s=5.0,
        )
        stream = ref.decode(cmd)
        if kv:
            await anext(stream)  # the reservation
            ref.kv_failed(cmd.request_id, "probe")
        async for _ in stream:
            pass

    async def batch(start: int, count: int) -> None:
        for j in range(start, start + count, 4):
            await asyncio.gather(*(one(j + k, (j + k) % 2 == 0) for k in range(4)))
            ref.drain_cache_events()

    await batch(0, 200)
    tracemalloc.start(10)
    s1 = tracemalloc.take_snapshot()
    r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    await batch(200, n)
    s2 = tracemalloc.take_snapshot()
    r2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"maxrss {r1} -> {r2} kB over {n} requests")
    for stat in s2.compare_to(s1, "traceback")[:8]:
        print(stat)
        for line in stat.traceback.format()[-6:]:
            print("   ", line)
    print(await ref.check())
    await ref.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 800))
