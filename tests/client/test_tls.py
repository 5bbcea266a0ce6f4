"""TLS against a fake TLS server with a throwaway CA made in the test.

Certificates come from the ``cryptography`` package when it is installed, else from the
``openssl`` command; without either the tests are skipped.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kaffi.client import AsyncClient, Client
from kaffi.errors import ConnectError
from tests.client.fake_faktory import FakeFaktory


@dataclass
class Material:
    ca: Path
    cert: Path
    key: Path


def _with_cryptography(directory: Path, names: list[str]) -> Material | None:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return None
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kaffi test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    for name in names:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    material = Material(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    material.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    material.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    material.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return material


def _with_openssl(directory: Path, names: list[str]) -> Material | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    material = Material(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca_key = directory / "ca-key.pem"
    csr = directory / "cert.csr"
    ext = directory / "ext.cnf"
    sans = ",".join(("IP:" if name.replace(".", "").isdigit() else "DNS:") + name for name in names)
    ext.write_text(f"subjectAltName={sans}\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=30)

    run(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-keyout", str(ca_key), "-out", str(material.ca), "-subj", "/CN=kaffi test CA"),
    )
    run(
        *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(material.key)),
        *("-out", str(csr), "-subj", f"/CN={names[0]}"),
    )
    run(
        *("x509", "-req", "-in", str(csr), "-CA", str(material.ca), "-CAkey", str(ca_key)),
        *("-CAcreateserial", "-out", str(material.cert), "-days", "1", "-extfile", str(ext)),
    )
    return material


def make_material(directory: Path, names: list[str]) -> Material:
    directory.mkdir(parents=True, exist_ok=True)
    material = _with_cryptography(directory, names) or _with_openssl(directory, names)
    if material is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    return material


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("tls"), ["127.0.0.1", "localhost"])


def server_context(material: Material) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(material.cert, material.key)
    return ctx


def client_context(material: Material) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(material.ca))


@pytest.fixture
def tls_server(material: Material) -> Iterator[FakeFaktory]:
    with FakeFaktory(tls=server_context(material), password="tls-pw") as server:
        yield server


def test_sync_client_over_tls(tls_server: FakeFaktory, material: Material) -> None:
    assert tls_server.url.startswith("tcp+tls://")
    with Client(tls_server.url, tls=client_context(material)) as client:
        assert client.settings.tls is not None
        for _ in range(5):
            client.push({"jobtype": "A", "queue": "secure"})
        assert client.fetch("secure") is not None
    # One connection for everything: TLS 1.3 session tickets on an idle socket must not
    # make the pool think the server hung up.
    assert len(tls_server.sessions) == 1
    assert len(tls_server.commands("PUSH")) == 5
    tls_server.wait_for(lambda: tls_server.sessions[0].ended)


def test_async_client_over_tls(tls_server: FakeFaktory, material: Material) -> None:
    async def main() -> None:
        async with AsyncClient(tls_server.url, tls=client_context(material)) as client:
            for _ in range(3):
                await client.push({"jobtype": "A"})
            assert (await client.info()).faktory.queues == {"default": 3}

    asyncio.run(asyncio.wait_for(main(), 30))
    assert len(tls_server.sessions) == 1


def test_unknown_ca_is_refused(tls_server: FakeFaktory) -> None:
    # The default context trusts the system's CAs only.
    with (
        Client(tls_server.url, connect_timeout=5) as client,
        pytest.raises(ConnectError, match="TLS"),
    ):
        client.connect()

    async def main() -> None:
        with pytest.raises(ConnectError, match="TLS"):
            await AsyncClient(tls_server.url, connect_timeout=5).connect()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_hostname_is_checked(tmp_path: Path) -> None:
    material = make_material(tmp_path / "other", ["faktory.example"])
    with (
        FakeFaktory(tls=server_context(material)) as server,
        Client(server.url, tls=client_context(material)) as client,
        pytest.raises(ConnectError, match="TLS"),
    ):
        client.connect()


def test_tls_false_speaks_plain_tcp(fake: FakeFaktory) -> None:
    url = fake.url.replace("tcp://", "tcp+tls://")
    with Client(url, tls=False) as client:
        client.push({"jobtype": "A"})
    assert len(fake.commands("PUSH")) == 1
