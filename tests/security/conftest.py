"""Fixtures for the security tests: relay settings, raw gRPC calls, a test PKI."""

from __future__ import annotations

import base64
import datetime
import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_relay.config import Config
from tests import relays
from tests.otlp_builders import TRACES_EXPORT

#: Bearer tokens of the two test tenants (>= 16 characters, as the config demands).
TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-fedcba9876543210"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def basic(public_key: str, secret_key: str) -> tuple[tuple[str, str], ...]:
    raw = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
    return (("authorization", f"Basic {raw}"),)


def call(
    address: str,
    payload: bytes,
    *,
    method: str = TRACES_EXPORT,
    metadata: Sequence[tuple[str, str]] = (),
    compression: grpc.Compression | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    timeout: float = 10.0,
) -> tuple[grpc.StatusCode, str]:
    """One raw-bytes OTLP export; (status code, details). OK is ``(StatusCode.OK, "")``."""
    if credentials is None:
        channel = grpc.insecure_channel(address, compression=compression)
    else:
        channel = grpc.secure_channel(address, credentials, compression=compression,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
    with channel:
        try:
            channel.unary_unary(method)(payload, timeout=timeout, metadata=tuple(metadata))
        except grpc.RpcError as e:
            return e.code(), str(e.details())
    return grpc.StatusCode.OK, ""


def relay_config(langfuse: LangfuseServer | None = None, **overrides: object) -> Config:
    """:func:`tests.relays.relay_config` with a shorter hold, retry budget and drain (stop these
    relays with ``running(cfg, timeout=3)``)."""
    return relays.relay_config(langfuse, **{"hold.seconds": 0.3, "retry.max_elapsed_seconds": 2,
                                            "queue.shutdown_timeout_seconds": 3, **overrides})


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-sec-default", secret_key="sk-lf-sec-default") as server:
        yield server


# --------------------------------------------------------------------------------------------
# A test PKI, generated at test time (nothing secret is checked in)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path  # signed by another CA
    rogue_client_key: Path

    def channel_credentials(self, *, client: bool = False, rogue: bool = False) -> grpc.ChannelCredentials:
        root = self.ca.read_bytes()
        if rogue:
            return grpc.ssl_channel_credentials(root, self.rogue_client_key.read_bytes(),
                                                self.rogue_client_cert.read_bytes())
        if client:
            return grpc.ssl_channel_credentials(root, self.client_key.read_bytes(), self.client_cert.read_bytes())
        return grpc.ssl_channel_credentials(root)


def _make_pki(directory: Path) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        return path

    def write_cert(cert: x509.Certificate, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str,
             server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False)
        )
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = make_ca("promptstamp test CA")
    rogue_key, rogue_ca = make_ca("some other CA")
    skey, scert = leaf(ca_key, ca_cert, "localhost", server=True)
    ckey, ccert = leaf(ca_key, ca_cert, "agent-1", server=False)
    rkey, rcert = leaf(rogue_key, rogue_ca, "agent-1", server=False)
    return Pki(
        ca=write_cert(ca_cert, directory / "ca.pem"),
        server_cert=write_cert(scert, directory / "server.pem"),
        server_key=write_key(skey, directory / "server-key.pem"),
        client_cert=write_cert(ccert, directory / "client.pem"),
        client_key=write_key(ckey, directory / "client-key.pem"),
        rogue_client_cert=write_cert(rcert, directory / "rogue.pem"),
        rogue_client_key=write_key(rkey, directory / "rogue-key.pem"),
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return _make_pki(tmp_path_factory.mktemp("pki"))
