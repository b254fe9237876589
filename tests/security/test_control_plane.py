"""The control plane between gateway and workers: HTTPS with mutual TLS from `prfaas certs`
bundles, and registration bound to the certificate. Real certificates, real TLS 1.3, real
uvicorn servers (the worker's control app over a stand-in engine; the gateway's control
listener of a real ``build_deployment``), and the clients the gateway and workers use
(aiohttp ``WorkerClient``, httpx)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prfaas.config import CLUSTER_TOKEN_ENV, EngineConfig
from prfaas.control_plane import GATEWAY, ControlTls
from prfaas.deploy.config import DeployConfig
from prfaas.deploy.serve import Deployment, build_deployment
from prfaas.dispatch.worker_client import WorkerCallError, WorkerClient
from prfaas.messages import TOKEN_HEADER, DecodeCommand, KvFailed, SamplingSpec, WorkerCheck
from prfaas.router.kv_index import KvIndex
from prfaas.transfer.tls import TlsConfig, write_certs
from prfaas.worker import Worker, WorkerConfig, create_worker_app
from tests.fakes.cluster import word_tokenizer
from tests.fakes.worker import FakeWorker
from tests.gateway.conftest import ServerThread
from tests.worker.test_app_seam import StandIn

TOKEN = "control-plane-token"
AUTH = {TOKEN_HEADER: TOKEN}
SECRET_PROMPT = [31337, 27182, 16180]  # token ids that must never cross in clear


@pytest.fixture(scope="module", autouse=True)
def cluster_token() -> Iterator[None]:
    """The deployment's cluster token is ours (workers started elsewhere share it so)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CLUSTER_TOKEN_ENV, TOKEN)
        yield


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("certs")
    write_certs(path, ["local", "remote"])
    return path


def context(certs: Path, name: str) -> ssl.SSLContext:
    """A client context holding ``name``'s certificate (a cluster or the gateways')."""
    return ControlTls.from_dir(certs, name).client_context()


def test_certs_write_one_bundle_per_cluster_and_no_ca_key_in_any(tmp_path: Path) -> None:
    write_certs(tmp_path, ["local", "remote"])
    for name in ("local", "remote", GATEWAY):
        bundle = tmp_path / name
        assert sorted(p.name for p in bundle.iterdir()) == sorted(
            ["ca.pem", f"{name}.pem", f"{name}.key"]
        )
        assert (bundle / f"{name}.key").stat().st_mode & 0o777 == 0o600
        assert b"BEGIN CERTIFICATE" in (bundle / "ca.pem").read_bytes()
        assert all(b"PRIVATE KEY" not in p.read_bytes() for p in bundle.glob("*.pem"))
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    # A cluster added later joins the same CA: its bundle verifies against the first ones.
    write_certs(tmp_path, ["later"])
    assert (tmp_path / "later" / "ca.pem").read_bytes() == (
        tmp_path / "local" / "ca.pem"
    ).read_bytes()
    with pytest.raises(ValueError, match="cannot name a cluster"):
        write_certs(tmp_path, [GATEWAY])


# -- the worker's control server ---------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_server(certs: Path) -> Iterator[ServerThread]:
    """A decode worker of cluster ``local`` serving its control app with mutual TLS."""
    config = WorkerConfig(
        name="w0",
        cluster="local",
        role="decode",
        host="127.0.0.1",
        port=1,
        gateway_urls=("https://127.0.0.1:1",),  # nobody listens: registration just retries
        cluster_token=TOKEN,
        engine=EngineConfig(model=None),
        certs_dir=certs / "local",  # its bundle alone
    )
    worker = Worker(config, StandIn())
    assert worker.control is not None and worker.info().http_url.startswith("https://")
    options = worker.control.uvicorn_options()
    with ServerThread(create_worker_app(worker), lifespan="on", options=options) as server:
        yield server


def decode_command() -> bytes:
    return DecodeCommand(
        request_id="r",
        prompt_token_ids=SECRET_PROMPT,
        params=SamplingSpec(max_tokens=2),
        tenant_salt_hex="",
        expect_kv=False,
        deadline_s=5.0,
    ).encode()


def test_the_worker_port_refuses_plain_http(worker_server: ServerThread) -> None:
    """A prompt's token ids sent in clear get no answer: the port speaks only TLS."""
    plain = worker_server.base_url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.post(plain + "/decode", content=decode_command(), headers=AUTH, timeout=5)
    with socket.create_connection(("127.0.0.1", worker_server.port), timeout=5) as s:
        s.sendall(b"POST /decode HTTP/1.1\r\nHost: w\r\nContent-Length: 2\r\n\r\n{}")
        answer = s.recv(4096)
    assert not answer.startswith(b"HTTP/")  # a TLS alert or a closed connection, no HTTP


def test_the_worker_refuses_a_client_without_a_valid_certificate(
    certs: Path, worker_server: ServerThread, tmp_path: Path
) -> None:
    url = worker_server.base_url + "/internal/check"
    no_cert = ControlTls(TlsConfig(certs / "ca.pem", None, None), GATEWAY).client_context()
    write_certs(tmp_path, [])  # another CA's gateway certificate
    foreign = ControlTls.from_dir(tmp_path, GATEWAY).tls
    other_ca = ControlTls(TlsConfig(certs / "ca.pem", foreign.cert_path, foreign.key_path), "x")
    for refused in (no_cert, other_ca.client_context()):
        with pytest.raises(httpx.HTTPError):
            httpx.get(url, headers=AUTH, verify=refused, timeout=5)


def test_only_a_gateway_certificate_commands_a_worker(
    certs: Path, worker_server: ServerThread
) -> None:
    url = worker_server.base_url + "/internal/check"
    # Another cluster's worker holds a valid certificate of the same CA: not a gateway's.
    r = httpx.get(url, headers=AUTH, verify=context(certs, "remote"), timeout=5)
    assert r.status_code == 403 and "not a gateway" in r.text
    assert httpx.get(url, verify=context(certs, GATEWAY), timeout=5).status_code == 401
    r = httpx.get(url, headers=AUTH, verify=context(certs, GATEWAY), timeout=5)
    assert r.status_code == 200 and WorkerCheck.decode(r.content).name == "w0"


def test_the_gateway_client_checks_the_cluster_the_worker_registered_in(
    certs: Path, worker_server: ServerThread
) -> None:
    """The gateway's aiohttp client: the worker at a URL must prove the cluster it
    registered in, whatever its address; an unregistered URL is never called."""
    base, body = worker_server.base_url, KvFailed(request_id="r", reason="test").encode()

    async def call(cluster: str | None) -> int:
        client = WorkerClient(TOKEN, context(certs, GATEWAY), lambda url: cluster)
        try:
            status, _ = await client.post(base + "/kv_failed", body, 5.0)
            return status
        finally:
            await client.aclose()

    assert asyncio.run(call("local")) == 200
    with pytest.raises(WorkerCallError, match="certificate"):
        asyncio.run(call("remote"))  # the fleet says remote; the certificate says local
    with pytest.raises(WorkerCallError, match="no registered worker"):
        asyncio.run(call(None))


# -- the gateway's control listener ------------------------------------------------------------


def gateway_only(certs: Path, **control_plane: object) -> Deployment:
    """A real gateway (``build_deployment``) whose instances are all started elsewhere."""
    instances = {"local": ["pd-p-0", "pd-d-0"], "remote": ["prfaas-0"]}
    cfg = DeployConfig.model_validate(
        {
            "certs_dir": str(certs),
            "control_plane": control_plane,
            "clusters": [
                {
                    "name": name,
                    "kind": "pd" if name == "local" else "prfaas",
                    "instances": [
                        {"name": n, "role": "decode" if "-d-" in n else "prefill", "spawn": False}
                        for n in names
                    ],
                }
                for name, names in instances.items()
            ],
            "links": [{"src": "remote", "dst": "local", "emulate": False}],
            "policy": {"threshold_tokens": 64, "control": {"enabled": False}},
        }
    )
    return build_deployment(
        cfg,
        word_tokenizer(),
        "unused: nothing is spawned",
        512,
        16,
        gateway_url="https://127.0.0.1:1",
        api_keys={},
        kv_index=KvIndex(),
    )


@pytest.fixture(scope="module")
def gateway(certs: Path) -> Iterator[tuple[Deployment, ServerThread]]:
    """A real gateway with its control listener (port 1 in the config is not used: the
    listener here picks its own)."""
    deployment = gateway_only(certs, port=1)
    assert deployment.control_app is not None and deployment.control_tls is not None
    options = deployment.control_tls.uvicorn_options()
    try:
        with ServerThread(deployment.control_app, options=options) as server:
            yield deployment, server
    finally:
        deployment.close()


def registration(name: str, cluster: str) -> bytes:
    worker = FakeWorker(name, "prefill", cluster)
    worker.http_url = "https://127.0.0.1:9"
    return worker.info().encode()


def post(url: str, body: bytes, verify: ssl.SSLContext) -> httpx.Response:
    # The gateway's certificate names GATEWAY, whatever its address: workers check that.
    with httpx.Client(verify=verify, timeout=5) as client:
        return client.post(url, content=body, headers=AUTH, extensions={"sni_hostname": GATEWAY})


def test_a_worker_cannot_register_into_another_cluster_than_its_certificate_names(
    certs: Path,
    gateway: tuple[Deployment, ServerThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    deployment, server = gateway
    register = server.base_url + "/internal/register"
    remote = context(certs, "remote")
    with caplog.at_level(logging.WARNING, logger="prfaas.gateway.internal"):
        r = post(register, registration("pd-p-9", "local"), remote)
    assert r.status_code == 403
    assert "certificate of 'remote' cannot register into 'local'" in r.json()["detail"]
    assert "pd-p-9" not in deployment.fleet.workers
    assert any("refused worker pd-p-9" in rec.getMessage() for rec in caplog.records)
    # The same certificate registers into its own cluster; its heartbeats need it too.
    assert post(register, registration("prfaas-0", "remote"), remote).status_code == 200
    assert deployment.fleet.workers["prfaas-0"].info.cluster == "remote"
    beat = FakeWorker("prfaas-0", "prefill", "remote").heartbeat()
    beat = beat.model_copy(update={"epoch": deployment.fleet.workers["prfaas-0"].info.epoch})
    heartbeat = server.base_url + "/internal/heartbeat"
    assert post(heartbeat, beat.encode(), context(certs, "local")).status_code == 403
    assert post(heartbeat, beat.encode(), remote).status_code == 200


def test_the_gateway_control_listener_wants_tls_and_a_client_certificate(
    certs: Path, gateway: tuple[Deployment, ServerThread]
) -> None:
    deployment, server = gateway
    body = registration("pd-p-0", "local")
    with pytest.raises(httpx.HTTPError):  # plain HTTP: the token would cross in clear
        httpx.post(server.base_url.replace("https://", "http://") + "/internal/register",
                   content=body, headers=AUTH, timeout=5)  # fmt: skip
    no_cert = ControlTls(TlsConfig(certs / "ca.pem", None, None), "x").client_context()
    with pytest.raises(httpx.HTTPError):
        post(server.base_url + "/internal/register", body, no_cert)
    # A plain-HTTP worker URL is refused too: the gateway would call it in clear.
    plain = FakeWorker("pd-p-0", "prefill", "local")
    plain.http_url = "http://127.0.0.1:9"
    r = post(server.base_url + "/internal/register", plain.info().encode(), context(certs, "local"))
    assert r.status_code == 400 and "not https" in r.text
    # The public port serves no registration at all: the token alone places no worker.
    assert "/internal/register" not in {getattr(r, "path", "") for r in deployment.app.routes}


def test_plain_http_is_only_an_explicit_and_loud_choice(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    worker = [sys.executable, "-m", "prfaas.cli", "worker", "--name", "w", "--role", "prefill"]
    worker += ["--cluster", "local", "--listen", "127.0.0.1:0", "--gateway", "http://g:1"]
    env = dict(os.environ, **{CLUSTER_TOKEN_ENV: TOKEN})
    for extra, message in (
        ([], "pass --certs"),  # neither certificates nor --insecure: no start
        (["--certs", str(certs / "local")], "needs https"),  # certificates, an http gateway
    ):
        run = subprocess.run(
            worker + extra, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert run.returncode == 2 and message in run.stderr, run.stderr
    with caplog.at_level(logging.WARNING, logger="prfaas.control_plane"):
        insecure = gateway_only(certs, insecure=True)
    try:
        assert insecure.control_app is None and insecure.backend.settings.worker_tls is None
        assert any(r.getMessage().startswith("INSECURE: the control plane") for r in caplog.records)
        assert "/internal/register" in {getattr(r, "path", "") for r in insecure.app.routes}
    finally:
        insecure.close()
