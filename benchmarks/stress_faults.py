"""The faults `benchmarks/stress.py` injects while its requests run, in turn, one every
``every_s`` seconds after the previous one has cleared:

  wedge-d    SIGSTOP the decode instance serving the most requests for ``hold_s``, then
             SIGCONT (its streams fail over to another decode instance, or end with an error)
  wedge      SIGSTOP the remote prefill worker for ``hold_s``, then SIGCONT (a wedged
             process or a silent partition: its connections stay open, nothing moves)
  blackhole  the WAN link accepts connections and forwards nothing for ``hold_s``
  kill       SIGKILL the remote prefill worker, restart it, wait until it is back

A busy worker may answer slowly: every call here tolerates that rather than ending the run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from collections import Counter
from typing import Any, Protocol

import httpx

from prfaas.messages import WorkerCheck

FAULTS = ("wedge-d", "wedge", "blackhole", "kill")


class Deployment(Protocol):
    def worker_urls(self) -> dict[str, str]: ...
    def check(self, url: str) -> WorkerCheck: ...
    def instance(self, name: str) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...
    def restart(self, name: str) -> int: ...
    def link(self, **control: Any) -> None: ...


def inject(
    dep: Deployment,
    prefill: str,
    every_s: float,
    hold_s: float,
    stop: threading.Event,
    done: Counter[str],
) -> None:
    """Cycle through ``FAULTS`` until ``stop``; ``done`` counts each fault injected."""
    for fault in itertools.cycle(FAULTS):
        if stop.wait(every_s):
            return
        with contextlib.suppress(httpx.HTTPError):
            if fault == "kill":
                kill(dep, prefill, stop)
            elif fault == "wedge":
                wedge(dep, prefill, hold_s)
            elif fault == "blackhole":
                dep.link(blackhole=True)
                time.sleep(hold_s)
                dep.link(blackhole=False)
            else:
                wedge(dep, busiest_decoder(dep), hold_s)
            done[fault] += 1


def wedge(dep: Deployment, name: str, hold_s: float) -> None:
    pid = dep.check(dep.worker_urls()[name]).pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(hold_s)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_healthy(dep, name, None, threading.Event())


def kill(dep: Deployment, name: str, stop: threading.Event) -> None:
    epoch = dep.instance(name)["epoch"]
    os.kill(dep.check(dep.worker_urls()[name]).pid, signal.SIGKILL)
    dep.restart(name)
    wait_healthy(dep, name, epoch, stop)


def wait_healthy(dep: Deployment, name: str, old_epoch: int | None, stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(httpx.HTTPError):
            worker = dep.instance(name)
            if worker["healthy"] and worker["epoch"] != old_epoch:
                return
        time.sleep(0.2)


def busiest_decoder(dep: Deployment) -> str:
    decoders = [i for i in dep.status()["instances"] if i["role"] == "decode"]
    return str(max(decoders, key=lambda i: (i["inflight"], i["name"]))["name"])
