"""One asyncio connection to a Faktory server: :class:`AsyncConnection`.

The asyncio transport: it moves bytes between an asyncio protocol and the sans-IO
:class:`~kaffi.protocol.connection.ClientConnection` (handshake, replies owed, broken and
out-of-step rules), exactly as :class:`~kaffi.client.connection.Connection` does over a
blocking socket. Every connect, handshake, read and write goes through
:class:`~kaffi.client.boundary.map_exceptions` (reads and writes through its ``error()``,
as in the sync transport), and every read and write has a deadline
(no 3.11-only API such as ``asyncio.timeout``). A write waits on one future with a timer;
reads share one lazily re-armed timer per connection (see
:meth:`AsyncConnection._arm_read_timer`), so a reply costs no timer of its own.

Nothing here may block the event loop: no blocking socket call, no ``time.sleep``; the
only synchronous I/O is a zero-timeout ``select`` that checks an idle socket for EOF.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kaffi.client.boundary import Identity, Phase, TransportBase, hello_for, map_exceptions
from kaffi.client.config import ConnectionSettings
from kaffi.protocol.connection import ClientConnection
from kaffi.protocol.resp import Reply

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AsyncConnection"]

_CLOSE_TIMEOUT = 0.5
#: Bytes read from the socket at once, into one buffer the connection keeps.
_READ_BUFFER_SIZE = 65536
#: Transports of event loops that closed before their connections did (see
#: AsyncConnection.dispose): their sockets are closed, the objects are kept so that
#: their destructors (which would warn about a transport nobody closed) never run.
_DEAD_TRANSPORTS: list[asyncio.BaseTransport] = []


class _ReplyProtocol(asyncio.BufferedProtocol):
    """Hands whatever arrives to the connection's state machine and wakes the one
    coroutine waiting.

    A plain protocol rather than asyncio streams: a reply that is already complete costs
    no future, and a wait costs one future instead of a task per read. A buffered one:
    asyncio reads into our buffer rather than allocating a fresh 256 KiB ``bytes`` for
    every ``recv``, which glibc may serve with mmap/mremap/munmap each time (measured at
    several microseconds per reply in a worker).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, proto: ClientConnection) -> None:
        self.loop = loop
        self.proto = proto
        self._buffer = memoryview(bytearray(_READ_BUFFER_SIZE))
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.eof = False
        self.lost: BaseException | None = None
        #: Resolved by connection_lost: the socket is closed.
        self.gone: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        # What data_received does, without the extra call: this runs for every reply.
        self.proto.receive_data(self._buffer[:nbytes].tobytes())
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self.proto.receive_data(b"")
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is None:
            self.proto.receive_data(b"")
        else:
            self.lost = exc
        self._wake()
        if not self.gone.done():
            self.gone.set_result(None)
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


async def _connected_socket(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A non-blocking socket connected to ``host:port`` (each address in turn). Owning it
    lets :meth:`AsyncConnection.dispose` close it after its event loop is gone."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address found for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise error


class AsyncConnection(TransportBase):
    """A connected, greeted asyncio connection. Open with :meth:`open`; one user at a time."""

    __slots__ = (
        "_protocol",
        "_read_deadline",
        "_read_timer",
        "_read_timer_at",
        "_sock",
        "_transport",
        "loop",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: _ReplyProtocol,
        settings: ConnectionSettings,
        sock: socket.socket,
    ) -> None:
        super().__init__(protocol.proto, settings, protocol.loop.time())
        self._transport = transport
        self._protocol = protocol
        self._sock = sock
        #: The deadline of the read in progress (``loop.time()``), checked by the timer.
        self._read_deadline = 0.0
        #: One timer for every read (see _arm_read_timer), and when it is due to fire.
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_timer_at = 0.0
        self.loop = protocol.loop

    @classmethod
    async def open(
        cls,
        settings: ConnectionSettings,
        **identity: Unpack[Identity],
    ) -> AsyncConnection:
        """Connect, read HI, answer HELLO, all within ``connect_timeout`` (see
        :meth:`kaffi.client.connection.Connection.open` for what it raises)."""
        where = settings.url
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.connect_timeout
        protocol = _ReplyProtocol(loop, ClientConnection(where))
        with map_exceptions(None, Phase.CONNECT, where, settings.connect_timeout):
            sock = await asyncio.wait_for(
                _connected_socket(loop, settings.host, settings.port), settings.connect_timeout
            )
            try:
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: protocol,
                        sock=sock,
                        ssl=settings.tls,
                        server_hostname=settings.server_hostname if settings.tls else None,
                    ),
                    max(deadline - loop.time(), 0.001),
                )
            except BaseException:
                sock.close()
                raise
        assert isinstance(transport, asyncio.Transport)
        conn = cls(transport, protocol, settings, sock)
        try:
            # The state machine decides what is said; this only moves it.
            with map_exceptions(conn.proto, Phase.HANDSHAKE, where, settings.connect_timeout):
                await conn._read_reply(deadline)  # HI
                hello = hello_for(conn.proto, settings.password, identity)
                await conn._send(hello, deadline)
                await conn._read_reply(deadline)  # +OK
        except BaseException:
            conn._abort()
            raise
        conn.wid = identity.get("wid")
        return conn

    async def request(self, line: bytes, *, timeout: float | None = None) -> Reply:
        """Send one command line and return the reply (an ErrorReply included)."""
        data = self.proto.send(line)
        deadline = self.loop.time() + (self._timeout if timeout is None else timeout)
        await self._send(data, deadline)
        return await self._read_reply(deadline)

    async def pipeline(
        self, lines: Sequence[bytes], *, timeout: float | None = None
    ) -> list[Reply]:
        """Write every line in one go, then read one reply per line, in order."""
        data = self.proto.send(b"".join(lines), len(lines))
        if not lines:
            return []
        deadline = self.loop.time() + (self._timeout if timeout is None else timeout)
        await self._send(data, deadline)
        replies: list[Reply] = []
        for _ in lines:
            reply = self.proto.next_reply()
            if reply is None:
                reply = await self._read_reply(deadline)
            replies.append(reply)
        return replies

    async def write(self, data: bytes) -> None:
        """Write command lines without reading their replies (see
        :meth:`kaffi.client.connection.Connection.write`)."""
        await self._send(self.proto.send(data, data.count(b"\n")), self.loop.time() + self._timeout)

    async def read_reply(self, *, timeout: float | None = None) -> Reply:
        """Read the next reply to a command sent with :meth:`write`; ``reply_started``
        then says whether any byte of this reply had arrived when it failed."""
        self.proto.expect_reply()
        return await self._read_reply(
            self.loop.time() + (self._timeout if timeout is None else timeout)
        )

    def is_stale(self, *, probe: bool = True) -> bool:
        """True if the server closed this idle connection (or sent something unasked).

        What the event loop has already seen costs nothing to check; with ``probe`` the
        socket itself is polled too (a system call), for what the loop has not seen yet.
        """
        if self.broken:
            return True
        if self._protocol.eof or self._transport.is_closing():
            self.proto.mark_broken()
            return True
        if not probe:
            return False
        # The loop may not have run since the server hung up (no await in between): an
        # idle socket with bytes (or EOF) waiting is stale too. A zero-timeout poll.
        try:
            readable, _, _ = select.select((self._sock.fileno(),), (), (), 0)
        except (OSError, ValueError):
            readable = [True]
        if readable:
            self.proto.mark_broken()
            return True
        return False

    async def close(self) -> None:
        """Send END (best effort, only on a healthy connection) and close."""
        if self.pid != os.getpid():
            return  # the parent's connection: see AsyncConnectionPool
        if asyncio.get_running_loop() is not self.loop:
            self.dispose()
            return
        transport = self._transport
        end = self.proto.send_end()
        if end and not transport.is_closing():
            try:
                transport.write(end)
            except (OSError, RuntimeError):
                # Already torn down under us; END is only a courtesy.
                pass
        self.proto.mark_broken()
        self._stop_read_timer()
        transport.close()
        gone = self._protocol.gone
        if gone.done():
            return
        # Wait (briefly) for connection_lost, so the socket is really closed when close()
        # returns; a peer that never finishes a TLS close cannot hold us.
        timer = self.loop.call_later(_CLOSE_TIMEOUT, _expire, gone)
        try:
            await gone
        except asyncio.TimeoutError:
            transport.abort()
        finally:
            timer.cancel()

    def dispose(self) -> None:
        """Close a connection left behind by an event loop that is gone (the client is now
        used from a new loop, e.g. a second ``asyncio.run()``).

        Nothing will ever run on a closed loop, so the transport cannot close itself. The
        connection owns its socket (it connected it before handing it to asyncio), so it
        closes it through the socket's own API and no file descriptor leaks; the dead
        transport object is kept, without its read buffer, so that its destructor never
        warns about a transport nobody closed.
        """
        self.proto.mark_broken()
        self._stop_read_timer()
        if not self.loop.is_closed():
            self._transport.abort()
            return
        self._sock.close()
        self._protocol._buffer = memoryview(b"")
        _DEAD_TRANSPORTS.append(self._transport)

    def _abort(self) -> None:
        self.proto.mark_broken()
        self._stop_read_timer()
        self._transport.abort()

    def _stop_read_timer(self) -> None:
        timer = self._read_timer
        if timer is not None:
            self._read_timer = None
            timer.cancel()

    def _arm_read_timer(self, deadline: float) -> None:
        """Make sure the read timer fires no later than ``deadline``.

        A timer per read (``call_at`` and ``cancel`` around every wait) was a tenth of
        a worker's CPU. Instead one timer stays armed: a wait only records its deadline,
        and the timer is moved only when it would fire too late. When it fires early
        (the deadline moved on since it was armed) it re-arms itself for the current
        deadline, so every read stays bounded at the cost of one timer per timeout
        period rather than one per reply.
        """
        self._read_deadline = deadline
        timer = self._read_timer
        if timer is not None:
            if self._read_timer_at <= deadline:
                return
            timer.cancel()
        self._read_timer_at = deadline
        self._read_timer = self.loop.call_at(deadline, self._on_read_timer)

    def _on_read_timer(self) -> None:
        self._read_timer = None
        waiter = self._protocol.waiter
        if waiter is None or waiter.done():
            return  # no read in progress: the next one arms the timer again
        if self._read_deadline <= self._read_timer_at:
            waiter.set_exception(asyncio.TimeoutError())
        else:
            self._arm_read_timer(self._read_deadline)

    async def _send(self, data: bytes, deadline: float) -> None:
        protocol = self._protocol
        try:
            if protocol.eof or self._transport.is_closing():
                # A write to a closed transport is silently dropped; say so instead.
                raise ConnectionResetError("the connection was closed")
            self._transport.write(data)
            if protocol.paused:
                # Only wait when the kernel did not take everything at once.
                await self._wait_drain(deadline)
        except BaseException as exc:
            self._writing.reraise(exc)

    async def _wait_drain(self, deadline: float) -> None:
        protocol = self._protocol
        while protocol.paused and not protocol.eof:
            waiter = self.loop.create_future()
            protocol.drain_waiter = waiter
            timer = self.loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                protocol.drain_waiter = None
        if protocol.eof:
            raise ConnectionResetError("the connection was closed while writing")

    async def _read_reply(self, deadline: float) -> Reply:
        protocol = self._protocol
        proto = self.proto
        try:
            # Nothing can be parsed before a byte of the reply (or the end of the stream)
            # arrived: skip asking, the common case right after a write.
            reply = proto.next_reply() if proto.reply_started or protocol.eof else None
            while reply is None:
                if protocol.lost is not None:
                    raise protocol.lost
                waiter = self.loop.create_future()
                protocol.waiter = waiter
                self._arm_read_timer(deadline)
                try:
                    await waiter
                finally:
                    protocol.waiter = None
                reply = proto.next_reply()
            return reply
        except BaseException as exc:
            self._reading.reraise(exc)
