"""The real cluster gateway (``deploy.serve.build_deployment``: fleet, router, dispatch,
admission, internal routes) in front of fake workers, all on loopback in this process.

No model is loaded and no worker is spawned: every instance is ``spawn: false`` and a
``FakeWorker`` registers itself over the gateway's real ``/internal/register`` route."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from prfaas.deploy.config import DeployConfig
from prfaas.deploy.models import ModelFacts, ModelVersion, served_versions
from prfaas.deploy.serve import Deployment, build_deployment
from prfaas.router.kv_index import KvIndex
from tests.fakes.worker import FakeWorker
from tests.gateway.conftest import ServerThread

CONTEXT = 512  # tokens; the word tokenizer's model has 256 words, w3..w255


def word_tokenizer() -> Any:
    """The tiny checkpoints' word-level tokenizer ("w5 w6" -> [5, 6]), built in memory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, 256)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def cfg_versions(cfg: DeployConfig) -> list[ModelVersion]:
    """The versions of ``models:`` (the top-level one aside)."""
    return [v for v, _ in served_versions(cfg)[1:]]


@dataclass
class FakeCluster:
    url: str
    token: str
    deployment: Deployment
    workers: dict[str, FakeWorker]
    servers: dict[str, ServerThread]

    def register(self, worker: FakeWorker) -> int:
        """Serve ``worker`` (if not yet) and register it; the gateway's status code."""
        if worker.name not in self.servers:
            server = ServerThread(worker.app).__enter__()
            self.servers[worker.name] = server
            worker.http_url = server.base_url
        self.workers[worker.name] = worker
        return worker.register(self.url, self.token).status_code

    def beat(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Heartbeat for every served worker until ``stop`` (as real workers do)."""
        while not stop.wait(interval_s):
            for name in list(self.servers):
                if not self.workers[name].behaviour.heartbeats:
                    continue
                with contextlib.suppress(httpx.HTTPError):  # the next beat tries again
                    self.workers[name].send_heartbeat(self.url, self.token)

    def stop(self, name: str) -> None:
        """The worker's process is gone: its port refuses, its heartbeats stop."""
        server = self.servers.pop(name)
        server.server.force_exit = True  # do not wait for the gateway's kept-alive connections
        server.__exit__(None, None, None)


@contextlib.contextmanager
def fake_cluster(
    workers: list[FakeWorker],
    threshold_tokens: int = 64,
    layout: dict[str, tuple[str, str | None]] | None = None,
    **deploy: Any,
) -> Iterator[FakeCluster]:
    """A gateway with a PD cluster ``local`` and a PrfaaS cluster ``remote`` (the workers'
    clusters), t pinned at ``threshold_tokens``, the control loop off; ``deploy`` overrides
    deploy.yaml keys (``overload``, ``kv_deadline_s``, ``models``: their checkpoints are the
    word tokenizer's too, …). Every worker registers first. ``layout``: other clusters
    instead, name -> (kind, region), each PrfaaS one linked to every PD one."""
    layout = layout or {"local": ("pd", None), "remote": ("prfaas", None)}
    specs = [
        {
            "name": name,
            "kind": kind,
            **({"region": region} if region is not None else {}),
            "instances": [
                {"name": w.name, "role": w.role, "spawn": False}
                for w in workers
                if w.cluster == name
            ],
        }
        for name, (kind, region) in layout.items()
    ]
    pds = [name for name, (kind, _) in layout.items() if kind == "pd"]
    remotes = [name for name, (kind, _) in layout.items() if kind == "prfaas"]
    cfg = DeployConfig.model_validate(
        {
            "clusters": specs,
            # Fake workers speak plain TCP: plaintext by choice (the tests are about the gateway).
            "links": [
                {"src": src, "dst": dst, "tls": False, "insecure": True, "emulate": False}
                for src in remotes
                for dst in pds
            ],
            # ... and register over plain HTTP, on the public port: tests/security covers
            # the mutual-TLS control plane with real certificates.
            "control_plane": {"insecure": True},
            "policy": {"threshold_tokens": threshold_tokens, "control": {"enabled": False}},
            "served_model_name": "fake",
            **deploy,
        }
    )
    unused = "unused: nothing is spawned"
    deployment = build_deployment(
        cfg,
        word_tokenizer(),
        unused,
        CONTEXT,
        16,
        gateway_url="http://127.0.0.1:1",
        api_keys={key: t.name for t in cfg.tenants for key in t.api_keys},
        kv_index=KvIndex(),
        models={m.key: ModelFacts(unused, word_tokenizer(), CONTEXT) for m in cfg_versions(cfg)},
    )
    cluster: FakeCluster | None = None
    stop = threading.Event()
    try:
        on_stop = deployment.aclose_backends  # every model version's
        with ServerThread(deployment.app, on_stop=on_stop, lifespan="on") as gateway:
            token = deployment.backend.settings.cluster_token
            cluster = FakeCluster(gateway.base_url, token, deployment, {}, {})
            for worker in workers:
                assert cluster.register(worker) == 200, worker.name
            beats = threading.Thread(target=cluster.beat, args=(stop,), daemon=True)
            beats.start()
            yield cluster
    finally:
        stop.set()
        if cluster is not None:
            for name in list(cluster.servers):
                cluster.stop(name)
        deployment.close()
