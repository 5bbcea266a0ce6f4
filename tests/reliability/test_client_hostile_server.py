"""The client against a server that misbehaves: garbage, cut replies, silence.

Every case must end in a clear kaffi error (the class is checked) within the client's
timeout plus a margin, for the sync and the asyncio client alike: never a hang, never a
bare OSError or a parser's internal exception.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

import kaffi
from kaffi.errors import (
    ConnectError,
    ConnectTimeout,
    KaffiError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TransportError,
)
from kaffi.protocol.resp import DEFAULT_MAX_LINE
from tests.support import HI, OK, FakeFaktory, Handler, read_line

pytestmark = pytest.mark.reliability

TIMEOUT = 1.0
#: Time the client may take past its own deadline (a loaded 2-core machine).
MARGIN = 3.0
#: FETCH waits at least this long (the server blocks an empty FETCH for ~2 s).
FETCH_FLOOR = 5.0


def _silent_until_stopped(sock: socket.socket, stop: threading.Event) -> None:
    # Keep the connection open and say nothing; drain what the client sends.
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            if not sock.recv(65536):
                return
        except TimeoutError:
            continue


def greeted(answer: Callable[[socket.socket, threading.Event, bytes], None]) -> Handler:
    """A script that greets properly, then lets ``answer`` reply to the first command."""

    def script(sock: socket.socket, stop: threading.Event) -> None:
        sock.sendall(HI)
        if read_line(sock, stop) is None:  # HELLO
            return
        sock.sendall(OK)
        line = read_line(sock, stop)
        if line is None:
            return
        answer(sock, stop, line)

    return script


def before_hi(send: bytes, then_silent: bool = False) -> Handler:
    def script(sock: socket.socket, stop: threading.Event) -> None:
        if send:
            sock.sendall(send)
        if then_silent:
            _silent_until_stopped(sock, stop)

    return script


def reply_with(data: bytes, then_silent: bool = False) -> Handler:
    def answer(sock: socket.socket, stop: threading.Event, line: bytes) -> None:
        sock.sendall(data)
        if then_silent:
            _silent_until_stopped(sock, stop)

    return greeted(answer)


def trickle(sock: socket.socket, stop: threading.Event, line: bytes) -> None:
    """One byte of a never-ending reply line every 50 ms: each read succeeds, the reply
    never completes. Only a deadline over the whole reply ends this."""
    sock.sendall(b"+")
    while not stop.wait(0.05):
        sock.sendall(b"O")


def endless_line(sock: socket.socket, stop: threading.Event, line: bytes) -> None:
    """A reply line that never ends, as fast as the client reads it."""
    chunk = b"A" * 65536
    sock.sendall(b"+")
    sock.settimeout(0.2)
    sent = 0
    while not stop.is_set() and sent < 2 * DEFAULT_MAX_LINE:
        try:
            sock.sendall(chunk)
            sent += len(chunk)
        except TimeoutError:
            continue


def hello_then_close(sock: socket.socket, stop: threading.Event) -> None:
    sock.sendall(HI)
    read_line(sock, stop)


@dataclass(frozen=True)
class Case:
    name: str
    script: Handler
    expected: type[KaffiError]
    bound: float = TIMEOUT + MARGIN
    operation: str = "push"


CASES = [
    Case("garbage instead of HI", before_hi(b"SSH-2.0-OpenSSH_9.0\r\n"), RemoteProtocolError),
    Case("binary garbage instead of HI", before_hi(b"\x00\xff\x13\x37\r\n"), RemoteProtocolError),
    Case("HI of another protocol version", before_hi(b'+HI {"v":3}\r\n'), RemoteProtocolError),
    Case("HI that is not JSON", before_hi(b"+HI hello\r\n"), RemoteProtocolError),
    Case("nothing at all", before_hi(b"", then_silent=True), ConnectTimeout),
    Case("half a HI, then silence", before_hi(b'+HI {"v"', then_silent=True), ConnectTimeout),
    Case("closes before HI", before_hi(b""), ConnectError),
    Case("closes after reading HELLO", hello_then_close, ConnectError),
    Case("reply of unknown type", reply_with(b"*3\r\n"), RemoteProtocolError),
    Case("reply that is not UTF-8", reply_with(b"+\xff\xfe\r\n"), RemoteProtocolError),
    Case("absurd bulk length", reply_with(b"$99999999999999\r\n"), RemoteProtocolError),
    Case("negative bulk length", reply_with(b"$-7\r\n"), RemoteProtocolError),
    Case("bulk body without its line end", reply_with(b"$3\r\nabcXY\r\n"), RemoteProtocolError),
    Case("error reply without a code", reply_with(b"-\r\n"), RemoteProtocolError),
    Case("truncated bulk, then close", reply_with(b"$100\r\nabc"), ReadError),
    Case("truncated bulk, then silence", reply_with(b"$100\r\nabc", then_silent=True), ReadTimeout),
    Case("truncated line, then close", reply_with(b"+O"), ReadError),
    Case("no reply at all", reply_with(b"", then_silent=True), ReadTimeout),
    Case("closes instead of replying", reply_with(b""), ReadError),
    Case("a reply trickling forever", greeted(trickle), ReadTimeout),
    Case("a reply line that never ends", greeted(endless_line), RemoteProtocolError, bound=10.0),
    Case(
        "FETCH answered with silence",
        reply_with(b"", then_silent=True),
        ReadTimeout,
        bound=FETCH_FLOOR + MARGIN,
        operation="fetch",
    ),
    Case(
        "FETCH answered with a non-job",
        reply_with(b"$5\r\n[1,2]\r\n"),
        RemoteProtocolError,
        operation="fetch",
    ),
    Case(
        "INFO answered with broken JSON",
        reply_with(b"$3\r\n{{{\r\n"),
        RemoteProtocolError,
        operation="info",
    ),
]


def _sync_call(url: str, operation: str) -> None:
    client = kaffi.Client(url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
    try:
        if operation == "push":
            client.push({"jobtype": "hostile", "args": []})
        elif operation == "fetch":
            client.fetch("default")
        else:
            client.info()
    finally:
        client.close()


async def _async_call(url: str, operation: str) -> None:
    client = kaffi.AsyncClient(url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
    try:
        call: Awaitable[object]
        if operation == "push":
            call = client.push({"jobtype": "hostile", "args": []})
        elif operation == "fetch":
            call = client.fetch("default")
        else:
            call = client.info()
        # The outer bound only keeps a broken client from hanging the suite.
        await asyncio.wait_for(call, 60)
    finally:
        await client.close()


def _check(case: Case, error: BaseException | None, elapsed: float, flavour: str) -> None:
    assert error is not None, f"{flavour} client: {case.name}: no error was raised"
    assert isinstance(error, KaffiError), (
        f"{flavour} client: {case.name}: raised {type(error).__name__}: {error} (not a kaffi error)"
    )
    assert isinstance(error, case.expected), (
        f"{flavour} client: {case.name}: raised {type(error).__name__}: {error};"
        f" expected {case.expected.__name__}"
    )
    assert str(error), f"{flavour} client: {case.name}: the error has no message"
    assert elapsed < case.bound, (
        f"{flavour} client: {case.name}: took {elapsed:.2f}s (timeout {TIMEOUT:g}s)"
    )


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_sync_client_gets_a_clear_error(case: Case) -> None:
    with FakeFaktory(case.script) as server:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            _sync_call(server.url, case.operation)
        except Exception as exc:
            error = exc
        _check(case, error, time.monotonic() - started, "sync")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_async_client_gets_a_clear_error(case: Case) -> None:
    with FakeFaktory(case.script) as server:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            asyncio.run(_async_call(server.url, case.operation))
        except Exception as exc:
            error = exc
        _check(case, error, time.monotonic() - started, "async")


def test_a_failed_call_leaves_the_client_usable_and_bounded() -> None:
    """After garbage, the client throws the connection away; the next call opens a new
    one and fails the same clear way (no stale state, no leaked connection)."""
    with FakeFaktory(reply_with(b"*garbage\r\n")) as server:
        client = kaffi.Client(server.url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
        try:
            for attempt in range(1, 4):
                with pytest.raises(RemoteProtocolError):
                    client.info()
                assert server.accepted == attempt, (
                    f"{server.accepted} connections after {attempt} calls"
                )
        finally:
            client.close()


def test_push_to_a_server_that_keeps_closing_is_retried_once_then_raises() -> None:
    """A connection that dies before any reply byte is retried once on a new one
    (PUSH keeps its jid); then the error surfaces. Two connections, not a storm."""
    with FakeFaktory(reply_with(b"")) as server:
        client = kaffi.Client(server.url, timeout=TIMEOUT, connect_timeout=TIMEOUT)
        try:
            started = time.monotonic()
            with pytest.raises(TransportError):
                client.push({"jobtype": "hostile", "args": []})
            assert time.monotonic() - started < TIMEOUT + MARGIN
            assert server.accepted == 2, f"{server.accepted} connections for one push"
        finally:
            client.close()
