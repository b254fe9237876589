"""Stress under faults: 200 requests while workers are killed and wedged and the WAN
link is blackholed.

    PYTHONPATH=src .venv/bin/python benchmarks/stress.py [--model FOLDER] [--requests 200]
        [--duration-s 60] [--concurrency 16] [--fault-every-s 4] [--hold-s 6]
        [--decoders 2] [--kv-deadline-s 5] [--json]

Spawns `prfaas serve` (default: the embedded default model, as `prfaas serve` would;
``--model`` for another checkpoint, e.g. a tiny one) with the default topology: a local PD
cluster (one prefill, ``--decoders`` decode instances) and a remote PrfaaS cluster behind an
emulated WAN link with mutual TLS. Every
request has its own prompt (no shared prefix), short ones below the threshold t (local
prefill) and long ones above it (remote prefill), greedy; their expected outputs are
computed up front by the offline engine (``prfaas.LLM``) on the same checkpoint.

Requests arrive evenly over ``--duration-s`` (at most ``--concurrency`` in flight). While
they run, ``--fault-every-s`` seconds after the previous fault cleared, the next of
``benchmarks/stress_faults.py``'s faults strikes: the busiest decode instance SIGSTOPped
for ``--hold-s`` (its streams fail over to another decode instance), the remote prefill
worker SIGSTOPped for ``--hold-s``, the link blackholed for ``--hold-s``, the remote prefill
worker SIGKILLed and restarted. Each request counts as:
  completed  the output equals the expected one
  failed     ended with a clear error (an OpenAI-format HTTP error)
  hung       no answer within the KV deadline plus ``--margin-s``
  wrong      an answer that differs from the expected one
Afterwards every worker's GET /internal/check must show a clean pool and nothing held.
Exit status 1 if anything hung, answered wrong, or leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml

from prfaas import LLM, SamplingParams
from prfaas.control_plane import GATEWAY, ControlTls
from prfaas.deploy.launcher import free_port
from prfaas.messages import TOKEN_HEADER, LinkControl, WorkerCheck
from prfaas.transfer.tls import write_certs

sys.path.insert(0, str(Path(__file__).parent))
from stress_faults import inject

TOKEN = "stress-cluster-token"
API_KEY = "stress-key"
VICTIM = "prfaas-0"


@dataclass
class Outcome:
    kind: str  # completed | failed | hung | wrong
    path: str  # the route's path (prfaas | pd-p), or "" when refused before routing
    seconds: float
    detail: str = ""


@dataclass
class Report:
    model: str
    threshold_tokens: int
    requests: int
    concurrency: int
    kv_deadline_s: float
    fault_every_s: float
    hold_s: float
    decoders: int
    faults: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    paths: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    fallbacks: float = 0.0
    max_seconds: float = 0.0
    wall_s: float = 0.0
    clean: bool = False
    leaks: list[str] = field(default_factory=list)


def prompts(n: int, seed: int) -> list[str]:
    """Half short, half long; a unique first word: no shared prefix."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = rng.randint(8, 16) if i % 2 == 0 else rng.randint(60, 120)
        out.append(f"r{i} " + " ".join(f"w{rng.randrange(1000)}" for _ in range(words)))
    return out


def threshold_between(lengths: list[int]) -> int:
    """The routing threshold t midway between the short prompts (even indices, local
    prefill) and the long ones (remote prefill), in this model's tokens."""
    longest_short, shortest_long = max(lengths[::2]), min(lengths[1::2])
    if longest_short >= shortest_long:
        raise SystemExit("short and long prompts overlap in tokens; change the word counts")
    return (longest_short + shortest_long) // 2


def deploy_yaml(
    model: str | None, port: int, kv_deadline_s: float, threshold_tokens: int, decoders: int
) -> dict[str, Any]:
    return {
        "model": model,
        "served_model_name": "stress",
        "port": port,
        "clusters": [
            {
                "name": "local",
                "kind": "pd",
                "instances": [
                    {"name": "pd-p-0", "role": "prefill"},
                    *({"name": f"pd-d-{i}", "role": "decode"} for i in range(decoders)),
                ],
            },
            {
                "name": "remote",
                "kind": "prfaas",
                "instances": [{"name": VICTIM, "role": "prefill"}],
            },
        ],
        "links": [{"src": "remote", "dst": "local", "rate_gbps": 1.0, "rtt_ms": 5.0, "tls": True}],
        "tenants": [{"name": "stress", "api_keys": [API_KEY]}],
        "policy": {"name": "prfaas", "threshold_tokens": threshold_tokens},
        "kv_deadline_s": kv_deadline_s,
    }


class Deployment:
    def __init__(self, model: str | None, args: argparse.Namespace, threshold: int, tmp: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "deploy.yaml"
        raw = deploy_yaml(model, self.port, args.kv_deadline_s, threshold, args.decoders)
        # Our own CA, so that the checks below reach the workers as a gateway does (mTLS).
        raw["certs_dir"] = str(tmp / "certs")
        write_certs(tmp / "certs", ["local", "remote"])
        self.worker_tls = ControlTls.from_dir(tmp / "certs", GATEWAY).client_context()
        config.write_text(yaml.safe_dump(raw))
        env = dict(os.environ, PRFAAS_CLUSTER_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prfaas.cli", "serve", "--config", str(config)]
            + ["--log-dir", str(tmp / "logs")],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "prfaas is serving" in line:
                break
        else:
            raise SystemExit(f"prfaas serve did not start; logs in {tmp / 'logs'}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep draining

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = httpx.get(self.url + "/status", timeout=10).json()
        return status

    def worker_urls(self) -> dict[str, str]:
        return {i["name"]: i["http_url"] for i in self.status()["instances"]}

    def check(self, url: str) -> WorkerCheck:
        r = httpx.get(
            url + "/internal/check",
            headers={TOKEN_HEADER: TOKEN},
            timeout=10,
            verify=self.worker_tls,
        )
        r.raise_for_status()
        return WorkerCheck.decode(r.content)

    def instance(self, name: str) -> dict[str, Any]:
        return next(i for i in self.status()["instances"] if i["name"] == name)

    def restart(self, name: str) -> int:
        """Restart a spawned worker; its new pid."""
        r = httpx.post(
            f"{self.url}/internal/workers/{name}/restart", headers={TOKEN_HEADER: TOKEN}, timeout=30
        )
        r.raise_for_status()
        return int(r.json()["pid"])

    def link(self, **control: Any) -> None:
        r = httpx.post(
            f"{self.url}/internal/link/remote->local",
            content=LinkControl(**control).encode(),
            headers={TOKEN_HEADER: TOKEN},
            timeout=10,
        )
        r.raise_for_status()

    def fallbacks(self) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        found = re.findall(r"^prfaas_instance_kv_fallbacks\{[^}]*\} (\S+)$", text, re.M)
        return sum(float(v) for v in found)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def one(client: openai.OpenAI, prompt: str, expected: str, max_tokens: int, at_s: float) -> Outcome:
    time.sleep(max(0.0, at_s - time.monotonic()))  # arrivals spread over --duration-s
    started = time.monotonic()
    try:
        raw = client.completions.with_raw_response.create(
            model="stress", prompt=prompt, max_tokens=max_tokens, temperature=0
        )
        text = raw.parse().choices[0].text
        path = raw.headers.get("x-prfaas-route", "").split(" ")[0]
        kind = "completed" if text == expected else "wrong"
        return Outcome(kind, path, time.monotonic() - started, "" if kind == "completed" else text)
    except openai.APITimeoutError:
        return Outcome("hung", "", time.monotonic() - started)
    except openai.APIStatusError as e:
        why = re.sub(r"(chat)?cmpl-[0-9a-f]+: ", "", str(e.message))[:80]  # one line per cause
        return Outcome("failed", "", time.monotonic() - started, f"HTTP {e.status_code}: {why}")
    except openai.APIConnectionError as e:
        return Outcome("failed", "", time.monotonic() - started, type(e).__name__)


def wait_clean(dep: Deployment, settle_s: float) -> list[str]:
    """Names and reports of workers not clean after ``settle_s`` (empty when all are)."""
    end = time.monotonic() + settle_s
    while True:
        leaks = []
        for name, url in dep.worker_urls().items():
            try:
                check = dep.check(url)
            except httpx.HTTPError as e:
                leaks.append(f"{name}: unreachable ({e})")
                continue
            if not check.idle_clean:
                leaks.append(f"{name}: {check}")
        if not leaks or time.monotonic() > end:
            return leaks
        time.sleep(0.5)


def run(args: argparse.Namespace) -> Report:
    texts = prompts(args.requests, args.seed)
    model_name = args.model or "embedded default (SmolLM2-135M-Instruct Q4_1)"
    print(f"expected outputs: offline engine on {model_name} …", file=sys.stderr)
    llm = LLM(args.model)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
    threshold = threshold_between([len(llm.tokenizer(t).input_ids) for t in texts])
    expected = [o.outputs[0].text for o in llm.generate(texts, params)]
    del llm
    report = Report(
        model_name,
        threshold,
        args.requests,
        args.concurrency,
        args.kv_deadline_s,
        args.fault_every_s,
        args.hold_s,
        args.decoders,
    )
    with tempfile.TemporaryDirectory(prefix="prfaas-stress-") as tmp:
        print("starting prfaas serve …", file=sys.stderr)
        dep = Deployment(args.model, args, threshold, Path(tmp))
        try:
            client = openai.OpenAI(
                base_url=dep.url + "/v1",
                api_key=API_KEY,
                max_retries=0,
                timeout=args.kv_deadline_s + args.margin_s,
            )
            fallbacks_before = dep.fallbacks()
            stop, faults = threading.Event(), Counter[str]()
            fault_thread = threading.Thread(
                target=inject,
                args=(dep, VICTIM, args.fault_every_s, args.hold_s, stop, faults),
                daemon=True,
            )
            started = time.monotonic()
            gap_s = args.duration_s / args.requests
            arrivals = [started + i * gap_s for i in range(args.requests)]
            fault_thread.start()
            with ThreadPoolExecutor(args.concurrency) as pool:
                outcomes = list(
                    pool.map(
                        lambda prompt, want, at_s: one(client, prompt, want, args.max_tokens, at_s),
                        texts,
                        expected,
                        arrivals,
                    )
                )
            report.wall_s = time.monotonic() - started
            stop.set()
            fault_thread.join()
            report.faults = dict(faults)
            # The victims come back (and everything settles) before the leak check.
            time.sleep(2.0)
            report.leaks = wait_clean(dep, args.settle_s)
            report.clean = not report.leaks
            report.fallbacks = dep.fallbacks() - fallbacks_before
        finally:
            dep.stop()
    report.counts = dict(Counter(o.kind for o in outcomes))
    for kind in ("completed", "failed", "hung", "wrong"):
        report.counts.setdefault(kind, 0)
    report.paths = dict(Counter(o.path for o in outcomes if o.path))
    report.errors = dict(Counter(o.detail for o in outcomes if o.kind == "failed"))
    report.max_seconds = max(o.seconds for o in outcomes)
    for o, text in zip(outcomes, texts, strict=True):
        if o.kind == "wrong":
            print(f"wrong output for {text[:40]!r}…: {o.detail!r}", file=sys.stderr)
    return report


def print_table(r: Report) -> None:
    rows = [
        ("model", r.model),
        ("requests / concurrency", f"{r.requests} / {r.concurrency}"),
        ("threshold t", f"{r.threshold_tokens} tokens"),
        ("kv deadline", f"{r.kv_deadline_s:g} s"),
        ("faults", f"{r.faults} (every {r.fault_every_s:g} s, held {r.hold_s:g} s)"),
        ("decode instances", r.decoders),
        ("completed (correct)", r.counts["completed"]),
        ("failed cleanly", f"{r.counts['failed']} {r.errors or ''}"),
        ("hung", r.counts["hung"]),
        ("wrong output", r.counts["wrong"]),
        ("routes (answered)", r.paths),
        ("local-prefill fallbacks", f"{r.fallbacks:g}"),
        ("slowest request", f"{r.max_seconds:.1f} s"),
        ("wall time", f"{r.wall_s:.1f} s"),
        ("pools clean afterwards", "yes" if r.clean else f"NO: {r.leaks}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder (default: embedded model)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    p.add_argument("--duration-s", type=float, default=60.0, help="arrivals spread over this")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--fault-every-s", type=float, default=4.0, help="after the last cleared")
    p.add_argument("--hold-s", type=float, default=6.0, help="how long a wedge/blackhole lasts")
    p.add_argument("--decoders", type=int, default=2, help="decode instances (failover)")
    p.add_argument("--kv-deadline-s", type=float, default=5.0)
    p.add_argument("--margin-s", type=float, default=60.0, help="beyond the deadline: hung")
    p.add_argument("--settle-s", type=float, default=30.0, help="wait for clean pools")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the deployment too
    report = run(args)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_table(report)
    bad = report.counts["hung"] + report.counts["wrong"] + (0 if report.clean else 1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
