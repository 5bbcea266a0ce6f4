"""The client's side of one Faktory connection as a state machine: bytes in, replies out.

:class:`ClientConnection` holds everything a connection must remember between reads and
writes, and nothing else: the reply parser, where the handshake stands, how many replies
the server still owes, and whether the byte stream can still be trusted. The sync and
asyncio transports in :mod:`kaffi.client` move bytes between a socket and this object;
it never touches a socket, a clock or an event loop, so every rule below is tested by
feeding it bytes (``tests/protocol/test_protocol_connection.py``).

The rules
---------

1. A connection starts in ``AWAITING_HI``: the server speaks first, and its ``+HI``
   greeting is the one reply owed. It is decoded (:func:`~kaffi.protocol.commands.decode_hi`)
   and kept as :attr:`ClientConnection.hi`; the state becomes ``SENDING_HELLO``.
2. In ``SENDING_HELLO`` the only thing to send is the HELLO, built by
   :meth:`~ClientConnection.send_hello` (the password is hashed the way HI asked). The
   state becomes ``AWAITING_OK``, owing one reply.
3. ``+OK`` to HELLO makes the connection ``READY``; ``-ERR`` raises
   :class:`~kaffi.errors.ServerError` (:class:`~kaffi.errors.AuthenticationError` for a
   wrong password) and breaks it.
4. In ``READY`` every command line sent (:meth:`~ClientConnection.send`) makes the server
   owe one reply; every reply parsed pays one back, in order. Several lines may be sent
   before their replies are read (pipelining).
5. A reply nobody asked for, or bytes still buffered once every owed reply has arrived,
   mean the stream is **out of step**: the reply that completed stands, but the
   connection becomes ``BROKEN``.
6. Bytes that are not RESP (:class:`~kaffi.errors.RemoteProtocolError`), the server
   closing the stream (:class:`~kaffi.errors.ReadError`), and any transport failure the
   transport reports (:meth:`~ClientConnection.mark_broken`) make it ``BROKEN``. A broken
   connection never becomes usable again: it must be closed and a new one opened.
7. :meth:`~ClientConnection.send_end` ends a ``READY`` connection (``CLOSED``). END gets
   no reply.
8. Anything sent in the wrong state raises :class:`~kaffi.errors.LocalProtocolError`,
   except a command on a broken or closed connection, which raises
   :class:`~kaffi.errors.ReadError` (the pool's rule: a transport error throws the
   connection away).

:attr:`~ClientConnection.reply_started` says whether any byte of the reply being waited
for has arrived: the client's retry-once rule resends a command only when it is False.

This module imports no I/O module (see ``tests/protocol/test_protocol_sans_io.py``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from kaffi.errors import LocalProtocolError, ReadError, RemoteProtocolError
from kaffi.protocol.commands import decode_hi, decode_ok, encode_end, encode_hello
from kaffi.protocol.models import Hi
from kaffi.protocol.resp import Reply, ReplyParser, SimpleReply

__all__ = ["ClientConnection", "ConnectionState", "OK_BYTES", "OK_REPLY"]


class ConnectionState(enum.Enum):
    """Where a :class:`ClientConnection` stands (see the module docstring)."""

    AWAITING_HI = "awaiting HI"
    SENDING_HELLO = "sending HELLO"
    AWAITING_OK = "awaiting HELLO's +OK"
    READY = "ready"
    BROKEN = "broken"
    CLOSED = "closed"


_READY = ConnectionState.READY
_BROKEN = ConnectionState.BROKEN

#: The reply most commands get, and the bytes that carry it. Replies are immutable, so
#: every +OK can be this one object, and a segment holding exactly these bytes needs no
#: parser.
OK_BYTES = b"+OK\r\n"
OK_REPLY = SimpleReply("OK")


class ClientConnection:
    """The client side of one connection, without I/O (see the module docstring).

    ``label`` names the server in messages (a URL without its password).
    """

    __slots__ = (
        "_eof",
        "_error",
        "_parser",
        "broken",
        "hi",
        "label",
        "owed",
        "reply_started",
        "state",
    )

    def __init__(self, label: str = "the server") -> None:
        self.label = label
        self.state = ConnectionState.AWAITING_HI
        #: True once BROKEN or CLOSED: never usable again. (A plain attribute rather
        #: than a property of ``state``: the pool reads it on every return.)
        self.broken = False
        #: Replies the server still owes, in order (the greeting first).
        self.owed = 1
        #: Whether any byte of the reply being waited for has arrived.
        self.reply_started = False
        #: The server's greeting, once it arrived (a default until then).
        self.hi = Hi(v=2)
        self._parser = ReplyParser()
        self._eof = False
        #: The parse error that broke the stream, raised again to every later reader.
        self._error: RemoteProtocolError | None = None

    def __repr__(self) -> str:
        return f"<ClientConnection {self.label} {self.state.value} owed={self.owed}>"

    @property
    def ready(self) -> bool:
        """True once greeted and while the stream is trusted."""
        return self.state is _READY

    # -- sending ------------------------------------------------------------------------

    def send_hello(
        self,
        *,
        hostname: str,
        pid: int,
        wid: str | None = None,
        labels: Sequence[str] = (),
        password: str | None = None,
    ) -> bytes:
        """The HELLO answering the greeting (rule 2). With ``wid`` the connection is a
        worker's (it may FETCH and BEAT); without, a producer's."""
        if self.state is not ConnectionState.SENDING_HELLO:
            raise LocalProtocolError(f"cannot send HELLO to {self.label}: {self.state.value}")
        try:
            line = encode_hello(
                self.hi, hostname=hostname, wid=wid, pid=pid, labels=labels, password=password
            )
        except BaseException:
            # No password for a server that wants one: there is nothing else to send.
            self._break()
            raise
        self.state = ConnectionState.AWAITING_OK
        self.owed = 1
        return line

    def send(self, data: bytes, replies: int = 1) -> bytes:
        """Account for command lines about to be written, which ask for ``replies``
        replies (one per line: a command is one line), and return them unchanged (rules
        4 and 8)."""
        if self.state is not _READY:
            self._refuse("send a command")
        if not self.owed:
            # A new exchange: nothing of its reply can have arrived yet (rule 5).
            self.reply_started = False
        self.owed += replies
        return data

    def send_end(self) -> bytes:
        """END, for a ready connection; nothing otherwise (rule 7). Either way the
        connection is closed afterwards."""
        ready = self.state is _READY
        if self.state is not _BROKEN:
            self.state = ConnectionState.CLOSED
        self.broken = True
        return encode_end() if ready else b""

    def expect_reply(self) -> None:
        """Check that a read may start: the connection is ready and owes a reply (rule 8;
        reading what nobody asked for would wait for ever)."""
        if self.state is not _READY:
            self._refuse("read a reply")
        if not self.owed:
            raise LocalProtocolError(f"no reply is owed by {self.label}: nothing was sent")

    def mark_broken(self) -> None:
        """Record a failure the transport saw (an OS error, a timeout, an interrupted
        read or write): the stream can no longer be trusted (rule 6)."""
        self._break()

    def _refuse(self, what: str) -> None:
        if self.state is _BROKEN or self.state is ConnectionState.CLOSED:
            raise ReadError(f"connection to {self.label} is {self.state.value}; open a new one")
        raise LocalProtocolError(f"cannot {what} to {self.label}: {self.state.value}")

    # -- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Take bytes as they arrived, in any chunking; ``b""`` means the server closed
        the stream. Never raises: what is wrong surfaces from :meth:`next_reply`."""
        if not data:
            self._eof = True
            return
        if not self.owed and self.state is not ConnectionState.CLOSED:
            self._break()  # unasked-for bytes: out of step (rule 5)
        self.reply_started = True
        if self._error is None:
            try:
                self._parser.feed(data)
            except RemoteProtocolError as exc:
                self._fail(exc)

    def receive_reply(self, data: bytes) -> Reply | None:
        """:meth:`receive_data` then :meth:`next_reply`, with a shortcut for the reply
        most commands get: a segment holding exactly ``+OK`` while one reply is owed."""
        if data == OK_BYTES and self.state is _READY and self.owed == 1 and not self.reply_started:
            self.owed = 0
            self.reply_started = True
            return OK_REPLY
        self.receive_data(data)
        return self.next_reply()

    def next_reply(self) -> Reply | None:
        """The next owed reply, or None until more bytes arrive. Raises what broke the
        connection: RemoteProtocolError, ReadError (closed by the server, or used after
        breaking), or the server's refusal of the handshake."""
        state = self.state
        if state is not _READY:
            self._check_readable(state)
        parser = self._parser
        try:
            reply = parser.next_reply()
        except RemoteProtocolError as exc:
            raise self._fail(exc) from None
        if reply is None:
            if self._eof:
                self._break()
                raise ReadError(f"{self.label} closed the connection")
            return None
        # A reply here is always owed: bytes arriving while nothing is owed broke the
        # connection in receive_data, so the parser is empty whenever owed is zero.
        self.owed -= 1
        if parser.buffered:
            if self.owed:
                self.reply_started = True  # bytes of the next owed reply are here already
            else:
                self._break()  # more than was asked for: out of step (rule 5)
        elif self.owed:
            self.reply_started = False
        if state is not _READY:
            self._handshake_step(state, reply)
        return reply

    def _check_readable(self, state: ConnectionState) -> None:
        if state is _BROKEN or state is ConnectionState.CLOSED:
            if self._error is not None:
                raise self._error
            self._refuse("read a reply")
        if state is ConnectionState.SENDING_HELLO:
            raise LocalProtocolError(f"{self.label} owes nothing until HELLO is sent")

    def _handshake_step(self, state: ConnectionState, reply: Reply) -> None:
        """Rules 1 and 3: the greeting, then HELLO's answer."""
        # next_reply already found bytes nobody asked for behind this reply (rule 5).
        out_of_step = self.state is _BROKEN
        try:
            if state is ConnectionState.AWAITING_HI:
                self.hi = decode_hi(reply)
                state = ConnectionState.SENDING_HELLO
            else:
                decode_ok(reply, "HELLO")
                state = _READY
        except BaseException:
            self._break()
            raise
        if not out_of_step:
            self.state = state

    def _break(self) -> None:
        self.state = _BROKEN
        self.broken = True

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._break()
        self._error = exc
        return exc
