"""One blocking connection to a Faktory server: socket, optional TLS, HI/HELLO, replies.

:class:`Connection` is a thin shell around the sans-IO core in :mod:`kaffi.protocol`: it
writes the bytes the ``encode_*`` functions return and feeds what it reads to a
:class:`~kaffi.protocol.resp.ReplyParser`. It decodes nothing beyond the handshake; the
client turns replies into values.

This is the transport boundary of the sync client: every OS error (refused, reset,
timeout, TLS failure, EOF) becomes a :class:`~kaffi.errors.TransportError` *here* and
nowhere else. Every read and write has a deadline. A connection that saw a transport or
parse error marks itself :attr:`~Connection.broken` and must be thrown away.

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

from kaffi.client.config import ConnectionSettings
from kaffi.errors import (
    UNREACHABLE_HINT,
    ConnectError,
    ConnectTimeout,
    KaffiError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    WriteError,
    WriteTimeout,
)
from kaffi.protocol.commands import decode_hi, decode_ok, encode_end, encode_hello
from kaffi.protocol.models import Hi
from kaffi.protocol.resp import Reply, ReplyParser, SimpleReply

__all__ = ["Connection", "default_hostname", "os_error_text", "hello_line"]

_RECV_SIZE = 65536
#: END is a courtesy: never wait long for the kernel to take 5 bytes from a dying peer.
_END_TIMEOUT = 0.5
#: Whether plain TCP connections keep their deadlines in the kernel (see the docstring).
KERNEL_DEADLINES = sys.platform.startswith("linux") and hasattr(socket, "MSG_DONTWAIT")
#: The reply most commands get. Replies are immutable, so every +OK can share this one,
#: and the bytes that carry it need no parser.
_OK_BYTES = b"+OK\r\n"
_OK = SimpleReply("OK")

_hostname: str | None = None


def default_hostname() -> str:
    """This machine's host name, looked up once per process (HELLO sends it)."""
    global _hostname
    if _hostname is None:
        _hostname = socket.gethostname()
    return _hostname


class Connection:
    """A connected, greeted socket. Open with :meth:`open`; not thread-safe."""

    __slots__ = (
        "_kernel_deadlines",
        "_parser",
        "_sock",
        "_timeout",
        "broken",
        "generation",
        "hi",
        "idle_since",
        "pid",
        "reply_started",
        "settings",
        "wid",
    )

    def __init__(self, sock: socket.socket, settings: ConnectionSettings, hi: Hi) -> None:
        self._sock = sock
        self._parser = ReplyParser()
        self._timeout = settings.timeout
        #: Set by :meth:`open` once the handshake is done (see the module docstring).
        self._kernel_deadlines = False
        self.settings = settings
        self.hi = hi
        self.wid: str | None = None
        #: True once a transport or parse error made the byte stream untrustworthy.
        self.broken = False
        #: Whether any byte of a reply arrived for the last request/pipeline. A request
        #: that failed with this still False never reached the point of being answered,
        #: which is what the client's retry-once rule looks at.
        self.reply_started = False
        #: The process that opened the socket; a forked child must never use it.
        self.pid = os.getpid()
        #: Set by the pool that owns the connection (see ``kaffi.client.pool``).
        self.generation = 0
        #: ``time.monotonic()`` when the pool last took it back (or it was opened): the
        #: pool checks for a server-side close only after a long enough idle.
        self.idle_since = time.monotonic()

    def __repr__(self) -> str:
        state = "broken" if self.broken else "open"
        return f"<Connection {self.settings.url} wid={self.wid!r} {state}>"

    # -- opening ----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        settings: ConnectionSettings,
        *,
        wid: str | None = None,
        labels: Sequence[str] = (),
        hostname: str | None = None,
        pid: int | None = None,
    ) -> Connection:
        """Connect, read the server's HI and answer HELLO, all within ``connect_timeout``.

        With ``wid`` the connection is a worker's (it may FETCH and BEAT); without, it is a
        producer's. Raises ConnectError/ConnectTimeout, AuthenticationError (wrong or
        missing password; never worth retrying), ServerError or RemoteProtocolError.
        """
        where = settings.url
        deadline = time.monotonic() + settings.connect_timeout
        try:
            sock = socket.create_connection(
                (settings.host, settings.port), timeout=settings.connect_timeout
            )
        except TimeoutError:
            raise ConnectTimeout(
                f"could not connect to {where} within {settings.connect_timeout:g} s;"
                f" {UNREACHABLE_HINT}"
            ) from None
        except OSError as exc:
            raise ConnectError(
                f"could not connect to {where}: {os_error_text(exc)}; {UNREACHABLE_HINT}"
            ) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if settings.tls is not None:
                sock.settimeout(_remaining(deadline, where))
                sock = settings.tls.wrap_socket(sock, server_hostname=settings.server_hostname)
            conn = cls(sock, settings, Hi(v=2))
            conn._handshake(deadline, wid, labels, hostname, pid)
            conn._start_deadlines()
        except BaseException as exc:
            sock.close()
            if isinstance(exc, KaffiError):
                raise
            if isinstance(exc, socket.timeout):
                raise ConnectTimeout(
                    f"handshake with {where} took longer than {settings.connect_timeout:g} s"
                ) from None
            if isinstance(exc, ssl.SSLError | ssl.CertificateError):
                raise ConnectError(f"TLS handshake with {where} failed: {exc}") from None
            if isinstance(exc, OSError):
                raise ConnectError(
                    f"connection to {where} failed during the handshake: {os_error_text(exc)}"
                ) from None
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

    def _handshake(
        self,
        deadline: float,
        wid: str | None,
        labels: Sequence[str],
        hostname: str | None,
        pid: int | None,
    ) -> None:
        where = self.settings.url
        self._sock.settimeout(_remaining(deadline, where))
        try:
            self.hi = decode_hi(self._read_reply(deadline, preset=False))
            hello = hello_line(self.hi, self.settings, wid, labels, hostname, pid)
            self._sock.settimeout(_remaining(deadline, where))
            self._sock.sendall(hello)
            decode_ok(self._read_reply(deadline, preset=False), "HELLO")
        except (TimeoutError, ReadTimeout):
            raise ConnectTimeout(
                f"{where} did not complete HI/HELLO within {self.settings.connect_timeout:g} s"
            ) from None
        except ReadError as exc:
            raise ConnectError(f"{where} closed the connection during HI/HELLO: {exc}") from None
        self.wid = wid

    # -- requests ---------------------------------------------------------------------

    def request(self, line: bytes, *, timeout: float | None = None) -> Reply:
        """Send one command line and return the server's reply (an ErrorReply included:
        deciding what ``-ERR`` means is the caller's job). ``timeout`` overrides the read
        deadline for this one request (FETCH blocks on the server's side)."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        self.reply_started = False
        self._send(line)
        if timeout is None:
            reply = self._read_reply(time.monotonic() + self._timeout)
            if reply is _OK:
                # Only ever returned for a segment holding exactly +OK: nothing left over.
                return reply
        else:
            reply = self._read_reply(time.monotonic() + timeout, preset=False)
        if self._parser.buffered:
            # The server said more than we asked for: this reply is complete and stands,
            # but the stream is out of step, so the connection must not be reused.
            self.broken = True
        return reply

    def pipeline(self, lines: Sequence[bytes], *, timeout: float | None = None) -> list[Reply]:
        """Write every line in one go, then read one reply per line, in order.

        The worker sends ``ACK`` + ``FETCH`` this way: one write, one round trip.
        """
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        if not lines:
            return []
        self.reply_started = False
        self._send(b"".join(lines))
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        # Only the first read may trust the socket's preset timeout; later ones (and any
        # custom deadline) count down what is left.
        replies = [self._read_reply(deadline, preset=timeout is None)]
        replies.extend(self._read_reply(deadline, preset=False) for _ in lines[1:])
        if self._parser.buffered:
            self.broken = True
        return replies

    def write(self, data: bytes) -> None:
        """Write command lines without reading their replies: with :meth:`read_reply`,
        a caller can keep more than one command in flight (``push_bulk`` keeps two)."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        self.reply_started = self._parser.buffered > 0
        self._send(data)

    def read_reply(self, *, timeout: float | None = None) -> Reply:
        """Read the next reply to a command sent with :meth:`write`. ``reply_started``
        then says whether any byte of *this* reply had arrived when it failed."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        self.reply_started = self._parser.buffered > 0
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
            self.broken = True
            return True
        # EOF (b"") or unsolicited bytes: either way the stream cannot be trusted.
        self.broken = True
        return True

    def close(self) -> None:
        """Send END (best effort, only on a healthy connection) and close the socket."""
        sock = self._sock
        if not self.broken and self.pid == os.getpid():
            self.broken = True
            try:
                sock.settimeout(_END_TIMEOUT)
                sock.sendall(encode_end())
            except OSError:
                # The server may be gone already; END is only a courtesy.
                pass
        self.broken = True
        try:
            sock.close()
        except OSError:
            pass

    def abandon(self) -> None:
        """Forget this connection without a word to the server (after ``fork()``).

        Closing our copy of the file descriptor sends nothing while the parent still holds
        its own copy: no END, no TLS close_notify, no FIN.
        """
        self.broken = True
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
        except TimeoutError:
            self.broken = True
            raise WriteTimeout(
                f"{self.settings.url} did not accept our bytes within {self._timeout:g} s"
            ) from None
        except OSError as exc:
            self.broken = True
            raise WriteError(
                f"writing to {self.settings.url} failed: {os_error_text(exc)}"
            ) from None
        except BaseException:
            # Interrupted half way (KeyboardInterrupt): nobody knows what was written.
            self.broken = True
            raise

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
        parser = self._parser
        adjusted = False
        try:
            if preset and not parser.buffered:
                # The common case: the whole reply in one segment, most often +OK.
                data = self._sock.recv(_RECV_SIZE)
                if not data:
                    raise ReadError(f"{self.settings.url} closed the connection")
                self.reply_started = True
                if data == _OK_BYTES:
                    return _OK
                parser.feed(data)
                preset = False
            reply = parser.next_reply()
            while reply is None:
                if not preset:
                    # A custom deadline, or a reply in several segments: the deadline covers
                    # all of them, so a server trickling bytes cannot hold us past it.
                    self._set_read_timeout(_remaining_read(deadline, self.settings.url))
                    adjusted = True
                preset = False
                data = self._sock.recv(_RECV_SIZE)
                if not data:
                    raise ReadError(f"{self.settings.url} closed the connection")
                self.reply_started = True
                parser.feed(data)
                reply = parser.next_reply()
            if adjusted:
                self._set_read_timeout(self._timeout)
            return reply
        except (TimeoutError, BlockingIOError):
            # BlockingIOError: a kernel read deadline (SO_RCVTIMEO) ran out.
            self.broken = True
            raise ReadTimeout(f"{self.settings.url} did not answer in time") from None
        except (ReadError, RemoteProtocolError):
            self.broken = True
            raise
        except OSError as exc:
            self.broken = True
            raise ReadError(
                f"reading from {self.settings.url} failed: {os_error_text(exc)}"
            ) from None
        except BaseException:
            self.broken = True
            raise


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


def os_error_text(exc: OSError) -> str:
    """``ConnectionRefusedError: Connection refused``: the class and the OS's words, for
    messages (shared with the asyncio transport in :mod:`kaffi.client.aio`)."""
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def hello_line(
    hi: Hi,
    settings: ConnectionSettings,
    wid: str | None,
    labels: Sequence[str],
    hostname: str | None,
    pid: int | None,
) -> bytes:
    """The HELLO both transports send after ``hi``: this host and process unless told
    otherwise, and the password hashed the way ``hi`` asks."""
    return encode_hello(
        hi,
        hostname=hostname or default_hostname(),
        wid=wid,
        pid=os.getpid() if pid is None else pid,
        labels=labels,
        password=settings.password,
    )
