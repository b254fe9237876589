"""Mutual TLS 1.3 between clusters: a private CA, one certificate per cluster.

``write_certs`` (behind `prfaas certs`) makes a CA (``ca.pem``, ``ca.key``) and one bundle
folder per cluster and one for the gateways (``GATEWAY``): ``NAME/ca.pem``, ``NAME/NAME.pem``,
``NAME/NAME.key`` (EC P-256; the name is the certificate's common name and DNS name). A
bundle is all one machine needs: the CA key is in none of them. Both ends present their
certificate and verify the peer's against the CA; the client also checks that the server's
name is the one it meant to reach. TLS 1.2 and below are refused.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALID_DAYS = 365
GATEWAY = "gateway"  # the gateways' identity on the control plane; no cluster may take it


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "prfaas"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _load_or_make_ca(out_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA in ``out_dir`` if one is there (bundles added later join it), else a new one."""
    cert_path, key_path = out_dir / "ca.pem", out_dir / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC private key")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder("prfaas CA", _name("prfaas CA"), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _key_pem(key), private=True)
    return key, cert


def write_certs(out_dir: Path, clusters: list[str]) -> list[Path]:
    """Write one bundle per cluster, and the gateways' (``GATEWAY``), under ``out_dir``, signed
    by its CA (made if absent); returns the files written."""
    for cluster in clusters:
        if not cluster or "/" in cluster or cluster.startswith(".") or cluster == GATEWAY:
            raise ValueError(f"{cluster!r} cannot name a cluster certificate")
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _load_or_make_ca(out_dir)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    written = [out_dir / "ca.pem", out_dir / "ca.key"]
    for name in dict.fromkeys([*clusters, GATEWAY]):
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost")]
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        cert = (
            _builder(name, ca_cert.subject, key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        bundle = out_dir / name
        bundle.mkdir(exist_ok=True)
        _write(bundle / "ca.pem", ca_pem)
        _write(bundle / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(bundle / f"{name}.key", _key_pem(key), private=True)
        written += [bundle / "ca.pem", bundle / f"{name}.pem", bundle / f"{name}.key"]
    return written


@dataclass(frozen=True)
class Plaintext:
    """The explicit choice of no TLS (loopback, tests, a link that is already private).
    Sender and receiver take ``tls=`` without a default: plaintext is never an accident."""


PLAINTEXT = Plaintext()


@dataclass(frozen=True)
class TlsConfig:
    """This cluster's identity and the CA it trusts (files written by `prfaas certs`)."""

    ca_path: Path
    cert_path: Path | None  # None: present no certificate (a receiver will refuse us)
    key_path: Path | None

    @staticmethod
    def from_dir(certs_dir: Path, cluster: str) -> TlsConfig:
        """``cluster``'s identity from its bundle: ``certs_dir`` is the bundle itself, or the
        folder `prfaas certs` wrote that holds it (``certs_dir/cluster/``)."""
        if (certs_dir / cluster).is_dir():
            certs_dir = certs_dir / cluster
        return TlsConfig(
            certs_dir / "ca.pem", certs_dir / f"{cluster}.pem", certs_dir / f"{cluster}.key"
        )


def _context(purpose: ssl.Purpose, config: TlsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cafile=str(config.ca_path))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if config.cert_path is not None:
        key = None if config.key_path is None else str(config.key_path)
        context.load_cert_chain(str(config.cert_path), key)
    return context


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """Receiver side: requires a client certificate signed by the CA."""
    context = _context(ssl.Purpose.CLIENT_AUTH, config)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(config: TlsConfig) -> ssl.SSLContext:
    """Sender side: verifies the receiver's certificate and name (pass server_hostname)."""
    context = _context(ssl.Purpose.SERVER_AUTH, config)
    context.check_hostname = True
    return context


def peer_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The common name of the peer's verified certificate (its cluster, or ``GATEWAY``); None
    without TLS or without a client certificate."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for attribute in rdn:
            if attribute[0] == "commonName":
                return str(attribute[1])
    return None
