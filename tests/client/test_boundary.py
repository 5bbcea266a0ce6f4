"""The transport boundary: which kaffi error each OS/ssl error becomes, in each phase.

No socket is opened: the exceptions are built by hand and pushed through
``map_exceptions`` as the transports do."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from kaffi.client.boundary import Phase, map_exceptions, translate
from kaffi.errors import (
    ConnectError,
    ConnectTimeout,
    KaffiError,
    ReadError,
    ReadTimeout,
    ServerError,
    WriteError,
    WriteTimeout,
)
from kaffi.protocol.connection import ClientConnection

WHERE = "tcp://example:7419"


@pytest.mark.parametrize(
    ("raised", "phase", "expected", "text"),
    [
        (TimeoutError(), Phase.CONNECT, ConnectTimeout, "could not connect to tcp://example"),
        (asyncio.TimeoutError(), Phase.CONNECT, ConnectTimeout, "within 2 s"),
        (
            ConnectionRefusedError(111, "Connection refused"),
            Phase.CONNECT,
            ConnectError,
            "could not connect to tcp://example:7419: ConnectionRefusedError: Connection refused",
        ),
        (ssl.SSLError("bad cert"), Phase.CONNECT, ConnectError, "TLS handshake with"),
        (ssl.SSLError("bad cert"), Phase.HANDSHAKE, ConnectError, "TLS handshake with"),
        (TimeoutError(), Phase.HANDSHAKE, ConnectTimeout, "did not complete HI/HELLO within 2 s"),
        (ReadTimeout("slow"), Phase.HANDSHAKE, ConnectTimeout, "did not complete HI/HELLO"),
        (
            ReadError("gone"),
            Phase.HANDSHAKE,
            ConnectError,
            "closed the connection during HI/HELLO: gone",
        ),
        (
            ConnectionResetError(104, "reset"),
            Phase.HANDSHAKE,
            ConnectError,
            "failed during the handshake: ConnectionResetError: reset",
        ),
        (TimeoutError(), Phase.READ, ReadTimeout, "did not answer in time"),
        (BlockingIOError(), Phase.READ, ReadTimeout, "did not answer in time"),
        (ConnectionResetError(104, "reset"), Phase.READ, ReadError, "reading from"),
        (ssl.SSLError("record"), Phase.READ, ReadError, "reading from"),
        (TimeoutError(), Phase.WRITE, WriteTimeout, "did not accept our bytes within 2 s"),
        (BrokenPipeError(32, "Broken pipe"), Phase.WRITE, WriteError, "writing to"),
        (RuntimeError("closed"), Phase.WRITE, WriteError, "writing to tcp://example:7419 failed"),
    ],
)
def test_translation(
    raised: BaseException, phase: Phase, expected: type[KaffiError], text: str
) -> None:
    mapped = translate(raised, phase, WHERE, 2.0)
    assert type(mapped) is expected
    assert text in str(mapped)


@pytest.mark.parametrize("phase", list(Phase))
def test_what_is_not_an_io_error_passes_unchanged(phase: Phase) -> None:
    for exc in (ValueError("x"), KeyboardInterrupt(), ServerError("ERR", "no")):
        assert translate(exc, phase, WHERE, 1.0) is exc
    assert translate(ReadTimeout("t"), Phase.READ, WHERE, 1.0).args == ("t",)


def test_map_exceptions_breaks_the_connection_and_raises_the_kaffi_error() -> None:
    proto = ClientConnection(WHERE)
    boundary = map_exceptions(proto, Phase.READ, WHERE, 1.0)
    with pytest.raises(ReadError, match="reading from") as info, boundary:
        raise ConnectionResetError(104, "reset")
    assert info.value.__suppress_context__
    assert proto.broken
    # Reused for the next read: entering it again works the same way.
    with pytest.raises(ReadTimeout), boundary:
        raise BlockingIOError


def test_map_exceptions_lets_an_interruption_through_but_still_breaks() -> None:
    proto = ClientConnection(WHERE)
    with pytest.raises(KeyboardInterrupt), map_exceptions(proto, Phase.WRITE, WHERE, 1.0):
        raise KeyboardInterrupt
    assert proto.broken


def test_map_exceptions_does_nothing_on_success() -> None:
    proto = ClientConnection(WHERE)
    with map_exceptions(proto, Phase.WRITE, WHERE, 1.0):
        pass
    assert not proto.broken
