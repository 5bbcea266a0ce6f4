"""One blocking connection to a Faktory server: socket, optional TLS, deadlines.

:class:`Connection` is the sync transport: it moves bytes between a socket and the
sans-IO :class:`~kaffi.protocol.connection.ClientConnection`, which owns the handshake,
the replies owed and the broken/out-of-step rules. It decodes nothing; the client turns
replies into values.

Every connect, handshake, read and write goes through
:class:`~kaffi.client.boundary.map_exceptions`, the one place OS and ssl errors become
:class:`~kaffi.errors.TransportError` (reads and writes call its ``error()`` from an
``except`` clause: entering a context manager twice per command would cost 2% of a
PUSH). Every read and write has a deadline. A connection
that saw a transport or parse error is :attr:`~Connection.broken` and must be thrown away.

On Linux a plain TCP connection keeps its deadlines in the kernel once greeted: the
socket is blocking with ``SO_RCVTIMEO`` as its read deadline, and a command is written
with one non-blocking ``send`` (waiting with ``poll`` against the write deadline only when
the send buffer is full). Python's own socket timeouts would ``poll`` before every send
and every receive, doubling the system calls of a one-job PUSH. TLS connections, and
other systems, use Python's socket timeouts.

A connection is not thread-safe: the pool hands it to one borrower at a time.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kaffi.client.boundary import (
    Identity,
    Phase,
    TransportBase,
    default_hostname,
    hello_for,
    map_exceptions,
    os_error_text,
)
from kaffi.client.config import ConnectionSettings
from kaffi.errors import ConnectTimeout, ReadTimeout
from kaffi.protocol.connection import ClientConnection
from kaffi.protocol.resp import Reply

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Connection", "default_hostname", "os_error_text", "KERNEL_DEADLINES"]

_RECV_SIZE = 65536
#: END is a courtesy: never wait long for the kernel to take 5 bytes from a dying peer.
_END_TIMEOUT = 0.5
#: Whether plain TCP connections keep their deadlines in the kernel (see the docstring).
KERNEL_DEADLINES = sys.platform.startswith("linux") and hasattr(socket, "MSG_DONTWAIT")


class Connection(TransportBase):
    """A connected, greeted socket. Open with :meth:`open`; not thread-safe.

    Built directly, it wraps a connected socket and the protocol state ``proto`` of
    whatever was already said on it.
    """

    __slots__ = ("_kernel_deadlines", "_sock")

    def __init__(
        self, sock: socket.socket, settings: ConnectionSettings, proto: ClientConnection
    ) -> None:
        super().__init__(proto, settings, time.monotonic())
        self._sock = sock
        #: Set by :meth:`open` once the handshake is done (see the module docstring).
        self._kernel_deadlines = False

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        settings: ConnectionSettings,
        **identity: Unpack[Identity],
    ) -> Connection:
        """Connect, read the server's HI and answer HELLO, all within ``connect_timeout``.

        With ``wid`` the connection is a worker's (it may FETCH and BEAT); without, it is a
        producer's. Raises ConnectError/ConnectTimeout, AuthenticationError (wrong or
        missing password; never worth retrying), ServerError or RemoteProtocolError.
        """
        where = settings.url
        deadline = time.monotonic() + settings.connect_timeout
        with map_exceptions(None, Phase.CONNECT, where, settings.connect_timeout):
            sock = socket.create_connection(
                (settings.host, settings.port), timeout=settings.connect_timeout
            )
        conn = cls(sock, settings, ClientConnection(where))
        try:
            with map_exceptions(conn.proto, Phase.HANDSHAKE, where, settings.connect_timeout):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if settings.tls is not None:
                    sock.settimeout(_remaining(deadline, where))
                    conn._sock = settings.tls.wrap_socket(
                        sock, server_hostname=settings.server_hostname
                    )
                conn._handshake(deadline, identity)
                conn._start_deadlines()
        except BaseException:
            conn._sock.close()
            raise
        return conn

    def _start_deadlines(self) -> None:
        """Give the greeted socket the deadlines every command runs under."""
        sock = self._sock
        if KERNEL_DEADLINES and not isinstance(sock, ssl.SSLSocket):
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(self._timeout))
            self._kernel_deadlines = True
        else:
            sock.settimeout(self._timeout)

    def _handshake(self, deadline: float, identity: Identity) -> None:
        # The state machine decides what is said; this only moves it, within the deadline.
        where = self.settings.url
        self._sock.settimeout(_remaining(deadline, where))
        self._read_reply(deadline, preset=False)  # HI
        hello = hello_for(self.proto, self.settings.password, identity)
        self._sock.settimeout(_remaining(deadline, where))
        self._sock.sendall(hello)
        self._read_reply(deadline, preset=False)  # +OK
        self.wid = identity.get("wid")

    # -- requests ---------------------------------------------------------------------

    def request(self, line: bytes, *, timeout: float | None = None) -> Reply:
        """Send one command line and return the server's reply (an ErrorReply included:
        deciding what ``-ERR`` means is the caller's job). ``timeout`` overrides the read
        deadline for this one request (FETCH blocks on the server's side)."""
        self._send(self.proto.send(line))
        if timeout is None:
            return self._read_reply(time.monotonic() + self._timeout)
        return self._read_reply(time.monotonic() + timeout, preset=False)

    def pipeline(self, lines: Sequence[bytes], *, timeout: float | None = None) -> list[Reply]:
        """Write every line in one go, then read one reply per line, in order.

        The worker sends ``ACK`` + ``FETCH`` this way: one write, one round trip.
        """
        data = self.proto.send(b"".join(lines), len(lines))
        if not lines:
            return []
        self._send(data)
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        # Only the first read may trust the socket's preset timeout; later ones (and any
        # custom deadline) count down what is left.
        replies = [self._read_reply(deadline, preset=timeout is None)]
        replies.extend(self._read_reply(deadline, preset=False) for _ in lines[1:])
        return replies

    def write(self, data: bytes) -> None:
        """Write command lines without reading their replies: with :meth:`read_reply`,
        a caller can keep more than one command in flight (``push_bulk`` keeps two)."""
        self._send(self.proto.send(data, data.count(b"\n")))

    def read_reply(self, *, timeout: float | None = None) -> Reply:
        """Read the next reply to a command sent with :meth:`write`. ``reply_started``
        then says whether any byte of *this* reply had arrived when it failed."""
        self.proto.expect_reply()
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        return self._read_reply(deadline, preset=timeout is None)

    def is_stale(self) -> bool:
        """True if the server closed this idle connection (or sent something unasked).

        The pool asks before handing out an idle connection, so a server restart costs no
        failed command. It never blocks.
        """
        if self.broken:
            return True
        sock = self._sock
        try:
            # A zero-timeout poll: the socket's own timeout would make recv() wait.
            readable, _, _ = select.select((sock,), (), (), 0)
            if not readable:
                return False
            if isinstance(sock, ssl.SSLSocket):
                # TLS 1.3 servers send session tickets after the handshake, so a readable
                # socket is normal here: let the TLS layer consume records without blocking.
                sock.setblocking(False)
                try:
                    sock.recv(1)
                finally:
                    sock.settimeout(self._timeout)
            else:
                # MSG_DONTWAIT too: with kernel deadlines the socket itself is blocking.
                sock.recv(1, socket.MSG_PEEK | _DONTWAIT)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except (OSError, ValueError):
            self.proto.mark_broken()
            return True
        # EOF (b"") or unsolicited bytes: either way the stream cannot be trusted.
        self.proto.mark_broken()
        return True

    def close(self) -> None:
        """Send END (best effort, only on a healthy connection) and close the socket."""
        sock = self._sock
        if self.pid == os.getpid():
            end = self.proto.send_end()
            if end:
                try:
                    sock.settimeout(_END_TIMEOUT)
                    sock.sendall(end)
                except OSError:
                    # The server may be gone already; END is only a courtesy.
                    pass
        self.proto.mark_broken()
        try:
            sock.close()
        except OSError:
            pass

    def abandon(self) -> None:
        """Forget this connection without a word to the server (after ``fork()``).

        Closing our copy of the file descriptor sends nothing while the parent still holds
        its own copy: no END, no TLS close_notify, no FIN.
        """
        self.proto.mark_broken()
        try:
            self._sock.close()
        except OSError:
            pass

    # -- I/O with deadlines ----------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            if self._kernel_deadlines:
                # One send takes a whole command unless the send buffer is full.
                try:
                    sent = self._sock.send(data, _DONTWAIT)
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    self._send_rest(data, sent)
            else:
                # sendall's timeout bounds the whole call (Python >= 3.5).
                self._sock.sendall(data)
        except BaseException as exc:
            self._writing.reraise(exc)

    def _send_rest(self, data: bytes, sent: int) -> None:
        """Write ``data[sent:]`` as the send buffer drains, within the write deadline."""
        deadline = time.monotonic() + self._timeout
        rest = memoryview(data)[sent:]
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        while rest:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                raise TimeoutError
            try:
                rest = rest[self._sock.send(rest, _DONTWAIT) :]
            except BlockingIOError:
                continue

    def _set_read_timeout(self, seconds: float) -> None:
        if self._kernel_deadlines:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
        else:
            self._sock.settimeout(seconds)

    def _read_reply(self, deadline: float, *, preset: bool = True) -> Reply:
        """Read until one whole reply is parsed or ``deadline`` passes. ``preset`` says the
        socket's timeout already matches the deadline (the common, one-segment case costs
        no extra system call)."""
        proto = self.proto
        recv = self._sock.recv
        try:
            if preset and not proto.reply_started:
                # The common case: the whole reply in one segment, most often +OK.
                reply = proto.receive_reply(recv(_RECV_SIZE))
                preset = False
            else:
                reply = proto.next_reply()
            if reply is not None:
                return reply
            adjusted = False
            while reply is None:
                if not preset:
                    # A custom deadline, or a reply in several segments: the deadline covers
                    # all of them, so a server trickling bytes cannot hold us past it.
                    self._set_read_timeout(_remaining_read(deadline, self.settings.url))
                    adjusted = True
                preset = False
                reply = proto.receive_reply(recv(_RECV_SIZE))
            if adjusted:
                self._set_read_timeout(self._timeout)
            return reply
        except BaseException as exc:
            self._reading.reraise(exc)


_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)


def _timeval(seconds: float) -> bytes:
    """``seconds`` as the ``struct timeval`` SO_RCVTIMEO takes (never zero: that means
    wait forever)."""
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    if not whole and not micro:
        micro = 1
    return struct.pack("@ll", whole, micro)


def _remaining(deadline: float, where: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ConnectTimeout(f"connecting to {where} took too long")
    return left


def _remaining_read(deadline: float, where: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ReadTimeout(f"{where} did not finish its reply in time")
    return left
