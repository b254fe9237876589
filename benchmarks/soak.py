"""Soak: mixed traffic for a long time with periodic faults; memory must stay flat.

    .venv/bin/python benchmarks/soak.py [--minutes 20] [--model FOLDER] [--json]

Spawns `prfaas serve` as `benchmarks/stress.py` does (local PD cluster, remote PrfaaS
cluster behind the emulated WAN link with mutual TLS, a short KV deadline) and sends a
steady mix of short (local) and long (remote) greedy requests, each checked against the
offline engine's output. Faults recur: every ``--kill-every-s`` the remote prefill worker
is SIGKILLed and restarted; every ``--stall-every-s`` the WAN link stalls past the KV
deadline (the admin route of the link emulator). The memory of every process that is not
killed (the gateway, the PD-P and PD-D workers) is sampled every 10 s: RssAnon, its own
pages (VmRSS beside it: it adds file pages that come and go with the page cache); growth is measured
from the end of ``--warmup-min`` to the end (goal: < 5% per process), with the least-squares
slope over the same samples (MiB per minute). Counts as in the stress run: completed
(correct), failed cleanly, hung, wrong; then a leak check.

The workers inherit this process's environment (glibc's ``MALLOC_ARENA_MAX`` among it, which
the report records): soaks with different values compare the allocator's settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openai

from prfaas import LLM, SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stress import (
    API_KEY,
    VICTIM,
    Deployment,
    Outcome,
    one,
    prompts,
    threshold_between,
    wait_clean,
)

MIB = 1 << 20
STEADY = ("pd-p-0", "pd-d-0")  # workers never killed: their memory must stay flat


@dataclass
class SoakReport:
    model: str
    minutes: float
    requests: int = 0
    kills: int = 0
    stalls: int = 0
    fault_errors: int = 0  # kills or stalls that failed to happen (then retried)
    counts: dict[str, int] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)
    rss_mib: dict[str, list[float]] = field(default_factory=dict)  # process -> VmRSS samples
    # process -> RssAnon samples: the process's own memory (heap, arenas, stacks). VmRSS also
    # counts file pages (the .so files), which the kernel drops and reads back with memory
    # pressure: up to 100 MiB either way on this machine, more than the growth measured.
    anon_mib: dict[str, list[float]] = field(default_factory=dict)
    # worker -> glibc's heap over every arena (WorkerCheck): live allocations, and the free
    # chunks it keeps. RssAnon that grows with neither is memory outside malloc.
    heap_in_use_mib: dict[str, list[float]] = field(default_factory=dict)
    heap_free_mib: dict[str, list[float]] = field(default_factory=dict)
    growth_pct: dict[str, float] = field(default_factory=dict)  # of RssAnon
    slope_mib_per_min: dict[str, float] = field(default_factory=dict)  # after the warm-up
    heap_in_use_slope: dict[str, float] = field(default_factory=dict)  # MiB/min, after it
    heap_free_slope: dict[str, float] = field(default_factory=dict)
    malloc_arena_max: str = ""  # this process's MALLOC_ARENA_MAX ("" when unset)
    clean: bool = False
    leaks: list[str] = field(default_factory=list)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, RssAnon) of ``pid`` in MiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["RssAnon"].split()[0]) / 1024


def faults(dep: Deployment, args: argparse.Namespace, stop: threading.Event, r: SoakReport) -> None:
    """Kill and stall on schedule. The victim's URL is looked up at each kill: a restarted
    worker binds new ports. A fault that could not be made is retried a second later and
    counted (``fault_errors``), never skipped in silence."""
    next_kill = time.monotonic() + args.kill_every_s
    next_stall = time.monotonic() + args.stall_every_s
    while not stop.wait(1.0):
        now = time.monotonic()
        if now >= next_kill:
            try:
                os.kill(dep.check(dep.worker_urls()[VICTIM]).pid, signal.SIGKILL)
                dep.restart(VICTIM)
            except (httpx.HTTPError, KeyError, ProcessLookupError):
                r.fault_errors += 1  # e.g. the victim still starting: again in a second
            else:
                r.kills += 1
                next_kill = now + args.kill_every_s
        if now >= next_stall:
            try:
                dep.link(stall_s=args.kv_deadline_s * 1.5)
            except httpx.HTTPError:
                r.fault_errors += 1
            else:
                r.stalls += 1
                next_stall = now + args.stall_every_s


def sampler(dep: Deployment, stop: threading.Event, r: SoakReport) -> None:
    pids = {"gateway": dep.proc.pid}
    urls = {name: url for name, url in dep.worker_urls().items() if name in STEADY}
    for name, url in urls.items():
        pids[name] = dep.check(url).pid
    while True:
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                rss, anon = memory_mib(pid)
                r.rss_mib.setdefault(name, []).append(rss)
                r.anon_mib.setdefault(name, []).append(anon)
        for name, url in urls.items():
            with contextlib.suppress(httpx.HTTPError):
                check = dep.check(url)
                if check.heap_in_use_bytes is not None and check.heap_free_bytes is not None:
                    r.heap_in_use_mib.setdefault(name, []).append(check.heap_in_use_bytes / MIB)
                    r.heap_free_mib.setdefault(name, []).append(check.heap_free_bytes / MIB)
        if stop.wait(10.0):
            return


def reference(model: str | None, texts: list[str], max_tokens: int) -> tuple[list[str], int]:
    """The offline engine's greedy answers and the routing threshold between the short and
    the long prompts (run in a child process: its memory goes back before the soak)."""
    llm = LLM(model)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    expected = [o.outputs[0].text for o in llm.generate(texts, params)]
    return expected, threshold_between([len(llm.tokenizer(t).input_ids) for t in texts])


def run(args: argparse.Namespace) -> SoakReport:
    pool_size = 64  # distinct prompts, reused: caches fill and evict as in real traffic
    texts = prompts(pool_size, args.seed)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        expected, threshold = child.submit(reference, args.model, texts, args.max_tokens).result()
    report = SoakReport(args.model or "embedded default (SmolLM2-135M-Instruct)", args.minutes)
    report.malloc_arena_max = os.environ.get("MALLOC_ARENA_MAX", "")
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="prfaas-soak-") as tmp:
        dep = Deployment(args.model, args, threshold, Path(tmp))
        try:
            client = openai.OpenAI(
                base_url=dep.url + "/v1",
                api_key=API_KEY,
                max_retries=0,
                timeout=args.kv_deadline_s + args.margin_s,
            )
            stop = threading.Event()
            threads = [
                threading.Thread(target=faults, args=(dep, args, stop, report), daemon=True),
                threading.Thread(target=sampler, args=(dep, stop, report), daemon=True),
            ]
            for t in threads:
                t.start()
            end = time.monotonic() + 60 * args.minutes
            rng = random.Random(args.seed)

            def client_loop(_: int) -> list[Outcome]:
                mine = []
                while time.monotonic() < end:
                    i = rng.randrange(pool_size)
                    mine.append(one(client, texts[i], expected[i], args.max_tokens, 0.0))
                    time.sleep(args.think_s)
                return mine

            with ThreadPoolExecutor(args.concurrency) as pool:
                for mine in pool.map(client_loop, range(args.concurrency)):
                    outcomes.extend(mine)
            stop.set()
            for t in threads:
                t.join()
            time.sleep(2.0)
            report.leaks = wait_clean(dep, 60.0)
            report.clean = not report.leaks
        finally:
            dep.stop()
    report.requests = len(outcomes)
    report.counts = dict(Counter(o.kind for o in outcomes))
    for kind in ("completed", "failed", "hung", "wrong"):
        report.counts.setdefault(kind, 0)
    report.paths = dict(Counter(o.path for o in outcomes if o.path))
    warm = max(1, int(6 * args.warmup_min))  # samples every 10 s
    for name, samples in report.anon_mib.items():
        if len(samples) > warm + 3:
            base = statistics.median(samples[warm : warm + 3])
            last = statistics.median(samples[-3:])
            report.growth_pct[name] = 100 * (last - base) / base
            report.slope_mib_per_min[name] = slope_after(samples, warm)
    for samples_of, slopes in (
        (report.heap_in_use_mib, report.heap_in_use_slope),
        (report.heap_free_mib, report.heap_free_slope),
    ):
        for name, samples in samples_of.items():
            if len(samples) > warm + 3:
                slopes[name] = slope_after(samples, warm)
    return report


def slope_after(samples: list[float], warm: int) -> float:
    """Least-squares MiB per minute of samples taken every 10 s, from sample ``warm`` on."""
    minutes = [i / 6 for i in range(warm, len(samples))]
    return statistics.linear_regression(minutes, samples[warm:]).slope


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--warmup-min", type=float, default=3.0)
    p.add_argument("--model", default=None)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--think-s", type=float, default=0.2, help="pause between a client's requests")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--kill-every-s", type=float, default=60.0)
    p.add_argument("--stall-every-s", type=float, default=90.0)
    p.add_argument("--kv-deadline-s", type=float, default=5.0)
    p.add_argument("--decoders", type=int, default=1, help="decode instances (pd-d-0 measured)")
    p.add_argument("--margin-s", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    r = run(args)
    if args.json:
        print(json.dumps(asdict(r), indent=2))
    else:
        arenas = r.malloc_arena_max or "unset (the launcher's default)"
        print(
            f"soak: {r.minutes:g} min on {r.model}; {r.kills} kills, {r.stalls} link stalls, "
            f"{r.fault_errors} fault attempts retried"
        )
        print(f"MALLOC_ARENA_MAX: {arenas}")
        print(f"requests {r.requests}: {r.counts}; routes {r.paths}")
        for name, pct in r.growth_pct.items():
            s, rss = r.anon_mib[name], r.rss_mib[name]
            slope = r.slope_mib_per_min[name]
            print(
                f"  RssAnon {name:<8} {s[0]:7.0f} MiB at start, {s[-1]:7.0f} at end, {pct:+.1f}%"
                f" after the warm-up, {slope:+.2f} MiB/min (VmRSS {rss[0]:.0f} -> {rss[-1]:.0f})"
            )
            if name in r.heap_in_use_slope:
                used, free = r.heap_in_use_mib[name], r.heap_free_mib[name]
                print(
                    f"    glibc heap: in use {used[0]:.0f} -> {used[-1]:.0f} MiB"
                    f" ({r.heap_in_use_slope[name]:+.2f} MiB/min), free chunks"
                    f" {free[0]:.0f} -> {free[-1]:.0f} MiB ({r.heap_free_slope[name]:+.2f} MiB/min)"
                )
        print("pools clean afterwards:", "yes" if r.clean else f"NO: {r.leaks}")
    bad = r.counts["hung"] + r.counts["wrong"] + (0 if r.clean else 1)
    bad += sum(1 for pct in r.growth_pct.values() if pct >= 5.0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
