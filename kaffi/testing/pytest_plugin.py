"""pytest fixtures for code that talks to Faktory: ``faktory_server`` and ``kaffi_client``.

Registered through the ``pytest11`` entry point, so installing kaffi is enough:

- ``faktory_server``: a fresh in-memory :class:`~kaffi.server.EmbeddedServer` on a free
  loopback port for each test (it starts in about a millisecond). It has ``.url``,
  ``.host``, ``.port`` and the server-side controls (``advance_clock``, ``quiet_worker``,
  ``terminate_worker``, ``info``, ``flush``, ``workers``). Its FETCH on empty queues
  answers after ``TEST_FETCH_HOLD`` (0.1 s) instead of Faktory's 2 s, so a worker under
  test stops without waiting out its last FETCH.
- When the environment variable ``KAFFI_TEST_URL`` is set (``tcp://host:port``, or
  ``tcp+tls://:password@host:port``), ``faktory_server`` is a handle on that server
  instead: FLUSHed before the test, with the same ``.url``; a test that calls a
  server-only control (``advance_clock``, ``quiet_worker``...) is skipped there.
- ``faktory_enterprise_server``: the same with the Faktory Enterprise features
  (``EmbeddedServer(enterprise=True)``); with ``KAFFI_TEST_URL`` the test runs only when
  that server is Enterprise.
- ``faktory_throttles``: the queue throttles ``faktory_enterprise_server`` starts with,
  None by default. Override it (a fixture of the same name in a test module or a
  ``conftest.py``) to return a ``throttles.toml`` path or the parsed document, e.g.
  ``{"throttles": {"images": {"concurrency": 2, "timeout": 60}}}``; with
  ``KAFFI_TEST_URL`` such a test is skipped (that server's throttles are its own).
- ``kaffi_client``: a :class:`kaffi.Client` connected to ``faktory_server``, closed after.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import pytest

from kaffi.protocol.commands import decode_hi, decode_info, decode_ok, encode_hello
from kaffi.protocol.resp import Reply, ReplyParser

if TYPE_CHECKING:
    from kaffi.client import Client

__all__ = [
    "RemoteServer",
    "faktory_server",
    "faktory_enterprise_server",
    "faktory_throttles",
    "kaffi_client",
    "TEST_URL_ENV",
    "TEST_FETCH_HOLD",
]

TEST_URL_ENV = "KAFFI_TEST_URL"
#: Seconds the test server holds a FETCH on empty queues (Faktory holds it 2 s): long
#: enough that an idle worker does not spin, short enough that stopping one is quick.
TEST_FETCH_HOLD = 0.1
_TIMEOUT = 10.0


class RemoteServer:
    """A Faktory server the tests did not start (``KAFFI_TEST_URL``)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("tcp", "tcp+tls"):
            raise pytest.UsageError(
                f"{TEST_URL_ENV} must be tcp://host:port or tcp+tls://..., got {url!r}"
            )
        self.url = url
        self.host = parts.hostname or "localhost"
        self.port = parts.port or 7419
        self.password = unquote(parts.password) if parts.password else None
        self.tls = parts.scheme == "tcp+tls"

    def __repr__(self) -> str:
        return f"<RemoteServer {self.host}:{self.port}>"

    def _command(self, line: bytes) -> Reply:
        raw = socket.create_connection((self.host, self.port), timeout=_TIMEOUT)
        sock: socket.socket = raw
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=self.host)
        with sock:
            parser = ReplyParser()

            def read() -> Reply:
                while True:
                    reply = parser.next_reply()
                    if reply is not None:
                        return reply
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError(f"{self.host}:{self.port} closed the connection")
                    parser.feed(chunk)

            hi = decode_hi(read())
            sock.sendall(encode_hello(hi, hostname="kaffi-tests", password=self.password))
            decode_ok(read(), "HELLO")
            sock.sendall(line)
            reply = read()
            sock.sendall(b"END\r\n")
            return reply

    def flush(self) -> None:
        """FLUSH the remote server (every test starts with no jobs)."""
        decode_ok(self._command(b"FLUSH\r\n"), "FLUSH")

    def info(self) -> dict[str, Any]:
        """The remote server's INFO document."""
        return decode_info(self._command(b"INFO\r\n")).raw

    def _embedded_only(self, what: str) -> None:
        pytest.skip(f"{what} needs the embedded server; {TEST_URL_ENV} points to another one")

    def advance_clock(self, seconds: float) -> None:
        """Skip the test: only the embedded server's clock can be moved."""
        self._embedded_only("advance_clock()")

    def quiet_worker(self, wid: str) -> bool:
        """Skip the test: only the embedded server takes this order from a test."""
        self._embedded_only("quiet_worker()")
        return False

    def terminate_worker(self, wid: str) -> bool:
        """Skip the test: only the embedded server takes this order from a test."""
        self._embedded_only("terminate_worker()")
        return False

    def workers(self) -> list[dict[str, Any]]:
        """Skip the test: only the embedded server lists its workers to a test."""
        self._embedded_only("workers()")
        return []


@pytest.fixture
def faktory_server() -> Iterator[Any]:
    """A fresh Faktory server for one test: embedded and in memory, or ``KAFFI_TEST_URL``."""
    url = os.environ.get(TEST_URL_ENV)
    if url:
        remote = RemoteServer(url)
        remote.flush()
        yield remote
        return
    from kaffi.server import EmbeddedServer

    with EmbeddedServer(fetch_hold=TEST_FETCH_HOLD) as server:
        yield server


@pytest.fixture
def faktory_throttles() -> Any:
    """The throttles ``faktory_enterprise_server`` starts with (``EmbeddedServer``'s
    ``throttles=``): None here; a test module or ``conftest.py`` overrides this fixture
    to throttle queues."""
    return None


@pytest.fixture
def faktory_enterprise_server(faktory_throttles: Any) -> Iterator[Any]:
    """A fresh server with the Faktory Enterprise features: the embedded one started
    with ``enterprise=True`` (and ``faktory_throttles``), or ``KAFFI_TEST_URL`` when
    that server says it is Enterprise (INFO's description); the test is skipped when it
    is not, or when it asks for throttles."""
    url = os.environ.get(TEST_URL_ENV)
    if url:
        if faktory_throttles is not None:
            pytest.skip(f"faktory_throttles needs the embedded server; {TEST_URL_ENV} is set")
        from kaffi.client import Client

        remote = RemoteServer(url)
        with Client(url) as client:
            description = str(client.info().raw.get("server", {}).get("description", ""))
        if "Enterprise" not in description:
            pytest.skip(f"{TEST_URL_ENV} points to a server that is not Faktory Enterprise")
        remote.flush()
        yield remote
        return
    from kaffi.server import EmbeddedServer

    with EmbeddedServer(
        fetch_hold=TEST_FETCH_HOLD, enterprise=True, throttles=faktory_throttles
    ) as server:
        yield server


@pytest.fixture
def kaffi_client(faktory_server: Any) -> Iterator[Client]:
    """A :class:`kaffi.Client` on ``faktory_server``, closed after the test."""
    from kaffi.client import Client

    client = Client(faktory_server.url)
    try:
        yield client
    finally:
        client.close()
