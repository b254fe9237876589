"""Mutual TLS 1.3: accepted with a valid client certificate, refused without one, with a
foreign CA, with the wrong server name, or below TLS 1.3. A refusal allocates nothing."""

from __future__ import annotations

import ssl
from pathlib import Path

import numpy as np
import pytest

from prfaas.transfer.config import LinkConfig, ReceiverConfig
from prfaas.transfer.errors import PeerGone, TransferRefused
from prfaas.transfer.link import Link
from prfaas.transfer.receiver import KvReceiver
from prfaas.transfer.sender import KvSender
from prfaas.transfer.tls import TlsConfig, client_context, server_context, write_certs

from .conftest import FAST, FINGERPRINT, make_payload


def _receiver(certs_dir: Path) -> KvReceiver:
    config = ReceiverConfig(fingerprint=FINGERPRINT, deadlines=FAST, resume_window_s=0)
    return KvReceiver(config, tls=server_context(TlsConfig.from_dir(certs_dir, "pd")))


def _sender(context: ssl.SSLContext, server_name: str = "pd") -> KvSender:
    link = Link(LinkConfig("tls", connections=2, chunk_bytes=64 << 10))
    return KvSender(link, tls=context, server_name=server_name, deadlines=FAST)


def test_mutual_tls_round_trip(certs_dir: Path) -> None:
    header, arrays = make_payload()
    with _receiver(certs_dir) as rx:
        context = client_context(TlsConfig.from_dir(certs_dir, "prfaas"))
        _sender(context).send(rx.address, header, arrays)
        got = rx.wait(header.request_id, 5)
        assert all(np.array_equal(g, a) for g, a in zip(got.layers, arrays, strict=True))
        rx.release(header.request_id)


def _refused(certs_dir: Path, context: ssl.SSLContext, server_name: str = "pd") -> Exception:
    """The sender's error; TransferRefused, or PeerGone when the receiver's TLS 1.3 alert
    arrives as a closed connection."""
    header, arrays = make_payload()
    with _receiver(certs_dir) as rx:
        with pytest.raises((TransferRefused, PeerGone)) as refused:
            _sender(context, server_name).send(rx.address, header, arrays)
        assert rx.num_transfers == 0 and rx.allocated_bytes == 0
    return refused.value


def test_refused_without_a_client_certificate(certs_dir: Path) -> None:
    _refused(certs_dir, client_context(TlsConfig(certs_dir / "ca.pem", None, None)))


def test_refused_with_a_certificate_from_another_ca(certs_dir: Path, tmp_path: Path) -> None:
    write_certs(tmp_path, ["prfaas"])
    bundle = tmp_path / "prfaas"
    foreign = TlsConfig(certs_dir / "ca.pem", bundle / "prfaas.pem", bundle / "prfaas.key")
    _refused(certs_dir, client_context(foreign))


def test_refused_when_the_receiver_is_not_the_cluster_we_meant(certs_dir: Path) -> None:
    context = client_context(TlsConfig.from_dir(certs_dir, "prfaas"))
    assert isinstance(_refused(certs_dir, context, "elsewhere"), TransferRefused)


def test_tls_1_2_is_refused(certs_dir: Path) -> None:
    context = client_context(TlsConfig.from_dir(certs_dir, "prfaas"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    _refused(certs_dir, context)


def test_certificate_files(certs_dir: Path) -> None:
    assert (certs_dir / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    assert (certs_dir / "pd" / "pd.key").stat().st_mode & 0o777 == 0o600
    assert (certs_dir / "ca.key").stat().st_mode & 0o777 == 0o600
