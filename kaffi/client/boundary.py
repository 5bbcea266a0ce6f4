"""The transport boundary: the one place OS and ssl errors become kaffi errors, and what
both transports keep about a connection (:class:`TransportBase`).

Both transports (:mod:`kaffi.client.connection` and :mod:`kaffi.client.aio_connection`)
run every connect, handshake, read and write inside a :class:`map_exceptions` block for
that phase. On the way out it marks the connection's
:class:`~kaffi.protocol.connection.ClientConnection` broken (whatever left the block
half way, a ``KeyboardInterrupt`` or a cancellation included, leaves the byte stream
untrustworthy) and translates the exception:

============================  ===================  ==================  =================
raised                        connect, handshake   read                write
============================  ===================  ==================  =================
a timeout                     ConnectTimeout       ReadTimeout         WriteTimeout
``ssl.SSLError``              ConnectError (TLS)   ReadError           WriteError
other ``OSError``             ConnectError         ReadError           WriteError
kaffi Read/WriteTimeout       ConnectTimeout       as raised           as raised
kaffi Read/WriteError         ConnectError         as raised           as raised
============================  ===================  ==================  =================

A timeout is ``TimeoutError`` (``socket.timeout``), ``asyncio.TimeoutError``, or, on a
read, ``BlockingIOError`` (what a socket with a kernel read deadline raises when it runs
out). A ``RuntimeError`` from an asyncio transport that was closed under a write is a
WriteError. Anything else passes through unchanged.

This module decides what an error *means*; it never performs I/O itself.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
import ssl
from collections.abc import Sequence
from typing import NoReturn, TypedDict

from kaffi.client.config import ConnectionSettings
from kaffi.errors import (
    UNREACHABLE_HINT,
    ConnectError,
    ConnectTimeout,
    KaffiError,
    ReadError,
    ReadTimeout,
    WriteError,
    WriteTimeout,
)
from kaffi.protocol.connection import ClientConnection
from kaffi.protocol.models import Hi

__all__ = [
    "Phase",
    "TransportBase",
    "map_exceptions",
    "translate",
    "os_error_text",
    "default_hostname",
    "Identity",
    "hello_for",
]

#: On Python 3.10 ``asyncio.TimeoutError`` is not yet ``TimeoutError``.
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)


class Phase(enum.Enum):
    """What a transport was doing when an error came up."""

    CONNECT = "connect"
    HANDSHAKE = "handshake"
    READ = "read"
    WRITE = "write"


class map_exceptions:
    """``with map_exceptions(proto, Phase.READ, where):`` translates what escapes the block
    (see the module docstring). ``seconds`` is the deadline named in timeout messages.

    One object per connection and phase is made once and entered again for every read or
    write. Entering costs two method calls (0.15 µs); the sync transport's per-command
    path, where that was 2% of a PUSH's client CPU, calls :meth:`reraise` from an
    ``except`` clause instead, which costs nothing when nothing fails.
    """

    __slots__ = ("phase", "proto", "seconds", "where")

    def __init__(
        self, proto: ClientConnection | None, phase: Phase, where: str, seconds: float
    ) -> None:
        self.proto = proto
        self.phase = phase
        self.where = where
        self.seconds = seconds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        # Never swallows: what left the block leaves it, translated or as it was.
        if exc is None:
            return
        mapped = self.error(exc)
        if mapped is not exc:
            raise mapped from None

    def reraise(self, exc: BaseException) -> NoReturn:
        """From an ``except`` clause: raise what ``exc`` means (see :meth:`error`). The
        per-command paths use it instead of entering this object, which costs nothing
        when nothing fails."""
        mapped = self.error(exc)
        if mapped is exc:
            raise exc
        raise mapped from None

    def error(self, exc: BaseException) -> BaseException:
        """Mark the connection broken and return what ``exc`` means (``exc`` itself when
        it needs no translation: re-raise it as it is)."""
        if self.proto is not None:
            self.proto.mark_broken()
        return translate(exc, self.phase, self.where, self.seconds)


#: Per phase: the error a timeout becomes, and its message.
_TIMEOUT_ERRORS: dict[Phase, tuple[type[KaffiError], str]] = {
    Phase.CONNECT: (
        ConnectTimeout,
        "could not connect to {where} within {seconds:g} s; " + UNREACHABLE_HINT,
    ),
    Phase.HANDSHAKE: (ConnectTimeout, "{where} did not complete HI/HELLO within {seconds:g} s"),
    Phase.READ: (ReadTimeout, "{where} did not answer in time"),
    Phase.WRITE: (WriteTimeout, "{where} did not accept our bytes within {seconds:g} s"),
}
#: Per phase: the error any other OSError becomes, and its message.
_OS_ERRORS: dict[Phase, tuple[type[KaffiError], str]] = {
    Phase.CONNECT: (ConnectError, "could not connect to {where}: {text}; " + UNREACHABLE_HINT),
    Phase.HANDSHAKE: (ConnectError, "connection to {where} failed during the handshake: {text}"),
    Phase.READ: (ReadError, "reading from {where} failed: {text}"),
    Phase.WRITE: (WriteError, "writing to {where} failed: {text}"),
}


def translate(exc: BaseException, phase: Phase, where: str, seconds: float) -> BaseException:
    """The kaffi error ``exc`` stands for in ``phase`` (``exc`` itself when it already is
    one, or is not an I/O error at all)."""
    if isinstance(exc, KaffiError):
        if phase is Phase.HANDSHAKE and isinstance(exc, ReadTimeout | WriteTimeout):
            exc = TimeoutError()  # the handshake's deadline is the connect timeout
        elif phase is Phase.HANDSHAKE and isinstance(exc, ReadError | WriteError):
            return ConnectError(f"{where} closed the connection during HI/HELLO: {exc}")
        else:
            return exc
    if isinstance(exc, _TIMEOUTS) or (phase is Phase.READ and isinstance(exc, BlockingIOError)):
        kind, message = _TIMEOUT_ERRORS[phase]
        return kind(message.format(where=where, seconds=seconds))
    if isinstance(exc, ssl.SSLError) and phase in (Phase.CONNECT, Phase.HANDSHAKE):
        return ConnectError(f"TLS handshake with {where} failed: {exc}")
    if isinstance(exc, OSError):
        kind, message = _OS_ERRORS[phase]
        return kind(message.format(where=where, text=os_error_text(exc)))
    if isinstance(exc, RuntimeError) and phase is Phase.WRITE:
        # asyncio's transports raise it for a write after they were closed under us.
        return WriteError(f"writing to {where} failed: {exc}")
    return exc


def os_error_text(exc: OSError) -> str:
    """``ConnectionRefusedError: Connection refused``: the class and the OS's words."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


_hostname: str | None = None


def default_hostname() -> str:
    """This machine's host name, looked up once per process (HELLO sends it)."""
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname()
    return _hostname


class Identity(TypedDict, total=False):
    """Who a connection says it is in its HELLO, the keywords of both transports'
    ``open(settings, **identity)``: with ``wid`` the connection is a worker's (it may
    FETCH and BEAT; ``labels`` are the worker's), without, a producer's; ``hostname`` and
    ``pid`` default to this host and process."""

    wid: str | None
    labels: Sequence[str]
    hostname: str | None
    pid: int | None


def hello_for(proto: ClientConnection, password: str | None, identity: Identity) -> bytes:
    """The HELLO both transports send: this host and process unless told otherwise."""
    hostname, pid = identity.get("hostname"), identity.get("pid")
    return proto.send_hello(
        hostname=hostname or default_hostname(),
        pid=os.getpid() if pid is None else pid,
        wid=identity.get("wid"),
        labels=identity.get("labels", ()),
        password=password,
    )


class TransportBase:
    """What :class:`~kaffi.client.connection.Connection` and
    :class:`~kaffi.client.aio_connection.AsyncConnection` keep alike: the protocol state
    ``proto``, the error boundaries of its reads and writes, and what the pool reads."""

    __slots__ = (
        "_reading",
        "_timeout",
        "_writing",
        "generation",
        "idle_since",
        "pid",
        "proto",
        "settings",
        "wid",
    )

    def __init__(self, proto: ClientConnection, settings: ConnectionSettings, now: float) -> None:
        #: The protocol state this transport moves bytes for.
        self.proto = proto
        self._timeout = settings.timeout
        self._reading = map_exceptions(proto, Phase.READ, settings.url, settings.timeout)
        self._writing = map_exceptions(proto, Phase.WRITE, settings.url, settings.timeout)
        self.settings = settings
        #: The worker id its HELLO named (None: a producer's connection).
        self.wid: str | None = None
        #: The process that opened it; a forked child must never use it.
        self.pid = os.getpid()
        #: Set by the pool that owns the connection (see ``kaffi.client.pool``).
        self.generation = 0
        #: When the pool last took it back (or it was opened), on the clock the pool
        #: uses: it checks for a server-side close only after a long enough idle.
        self.idle_since = now

    def __repr__(self) -> str:
        state = "broken" if self.broken else "open"
        return f"<{type(self).__name__} {self.settings.url} wid={self.wid!r} {state}>"

    @property
    def broken(self) -> bool:
        """True once a transport or parse error made the byte stream untrustworthy (or
        the connection was closed): it must be thrown away."""
        return self.proto.broken

    @property
    def reply_started(self) -> bool:
        """Whether any byte of the reply being waited for had arrived. A request that
        failed with this still False never reached the point of being answered, which
        is what the client's retry-once rule looks at."""
        return self.proto.reply_started

    @property
    def hi(self) -> Hi:
        """The server's greeting."""
        return self.proto.hi
