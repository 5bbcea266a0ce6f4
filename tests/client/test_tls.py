"""TLS against a fake TLS server with a throwaway CA made in the test.

The certificates come from :mod:`tests.reliability.certs` (the ``cryptography`` package
when it is installed, else the ``openssl`` command); without either the tests are skipped.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaffi.client import AsyncClient, Client
from kaffi.errors import ConnectError
from tests.reliability import certs
from tests.support import FakeFaktory


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> certs.Pki:
    if certs.available() is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    return certs.make_pki(tmp_path_factory.mktemp("tls"))


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def server_context(material: certs.Pki) -> ssl.SSLContext:
    return _context(material.server_cert, material.server_key)


def client_context(material: certs.Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(material.ca_cert))


@pytest.fixture
def tls_server(material: certs.Pki) -> Iterator[FakeFaktory]:
    with FakeFaktory(tls=server_context(material), password="tls-pw") as server:
        yield server


def test_sync_client_over_tls(tls_server: FakeFaktory, material: certs.Pki) -> None:
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


def test_async_client_over_tls(tls_server: FakeFaktory, material: certs.Pki) -> None:
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


def test_hostname_is_checked(material: certs.Pki) -> None:
    # A certificate our CA signed, for a name other than the one we connect to.
    with (
        FakeFaktory(tls=_context(material.wrong_cert, material.wrong_key)) as server,
        Client(server.url, tls=client_context(material)) as client,
        pytest.raises(ConnectError, match="TLS"),
    ):
        client.connect()


def test_tls_false_speaks_plain_tcp(fake: FakeFaktory) -> None:
    url = fake.url.replace("tcp://", "tcp+tls://")
    with Client(url, tls=False) as client:
        client.push({"jobtype": "A"})
    assert len(fake.commands("PUSH")) == 1
