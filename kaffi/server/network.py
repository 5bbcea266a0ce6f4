"""The embedded server's asyncio networking: sockets in, :class:`Session` calls, bytes out.

One :class:`ServerProtocol` per client connection (an ``asyncio.BufferedProtocol``, not
streams: it is several times faster for small pipelined commands). It feeds the bytes to a
:class:`~kaffi.protocol.resp.CommandParser`, runs each command through its
:class:`~kaffi.server.session.Session`, and queues the replies. :class:`Network` sends
them once per event-loop turn, *after* committing the storage journal, so a client never
sees ``+OK`` for a job that is not on disk yet.

Without a journal (memory mode) nothing needs committing first, so while only a few
clients are connected the replies to what one read brought are written as soon as it is
processed.

A blocked FETCH parks the connection: its later pipelined commands wait in the parser
until a job is delivered or 2 s pass. Reading is paused while a client does not read its
replies (transport back-pressure), so a flooding client cannot grow our buffers.

Rules kept here:
- before HELLO, anything unexpected closes the connection without a reply (as Faktory);
- a line over the cap, or bytes that are not UTF-8, get ``-ERR`` and a close;
- over ``max_connections``: ``-ERR too many connections: N`` and a close;
- no exception from one connection may reach the loop or another connection.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from kaffi.errors import RemoteProtocolError
from kaffi.protocol.resp import CommandParser, encode_bulk, encode_error
from kaffi.server.core import Reservation, ServerCore, Waiter
from kaffi.server.session import CLOSE, NULL, WAIT, Session

if TYPE_CHECKING:
    from kaffi.server.storage import SqliteJournal

__all__ = ["Network", "ServerProtocol", "FETCH_HOLD", "HANDSHAKE_TIMEOUT", "TICK_INTERVAL"]

log = logging.getLogger("kaffi.server")

#: How long a FETCH on empty queues waits for a job before answering ``$-1`` (seconds):
#: Faktory 1.10.0 holds it 2 s.
FETCH_HOLD = 2.0
#: How long a client has to send HELLO after connecting (seconds).
HANDSHAKE_TIMEOUT = 2.0
#: How often the scheduled and retry sets, the reaper and heartbeats are checked.
TICK_INTERVAL = 0.5
#: In memory mode, up to this many connections get their replies written as soon as a
#: read is processed; with more, replies wait for the end-of-turn flush (see
#: ServerProtocol.data_received).
DIRECT_WRITE_MAX_CONNECTIONS = 4
#: How long stopping waits for the listener's connections to be gone (seconds).
_CLOSE_TIMEOUT = 5.0
#: Bytes read from a socket at once, into the buffer all connections share.
READ_BUFFER_SIZE = 65536


class ServerProtocol(asyncio.BufferedProtocol):
    """One client connection.

    Buffered, so asyncio reads into :attr:`Network.read_buffer` instead of allocating a
    fresh 256 KiB ``bytes`` for every ``recv``: glibc serves an allocation that size with
    mmap, page faults and mremap each time, ~12 µs per read measured on a socket pair,
    about a quarter of what a one-round-trip PUSH cost the server. One buffer serves
    every connection because asyncio fills it and calls :meth:`buffer_updated` in one go
    on the loop's thread, and :meth:`buffer_updated` copies the bytes out before returning.
    """

    def __init__(self, net: Network, conn_id: int) -> None:
        self.net = net
        self.conn_id = conn_id
        self.session = Session(net.core, conn_id, net.password)
        self.parser = CommandParser(max_line=net.max_line)
        self.transport: asyncio.Transport | None = None
        self.out: list[bytes] = []
        self.closed = False
        self.close_after_flush = False
        self.waiter: Waiter | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.write_paused = False
        self.read_paused = False
        #: True while data_received runs in memory mode: replies collect in ``out`` and are
        #: written when it returns, instead of waiting for the next loop turn's flush.
        self.direct = False

    # -- asyncio callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Greet with ``+HI`` (or refuse: too many connections) and start the HELLO timer."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        net = self.net
        net.connections[self.conn_id] = self
        net.core.connections = len(net.connections)
        if len(net.connections) > net.max_connections:
            self._send(encode_error(f"too many connections: {net.max_connections}"))
            self.close_after_flush = True
            return
        self._send(self.session.greeting())
        self.timer = net.loop.call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.net.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.net.read_buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        """Parse what arrived and run the whole commands it completes."""
        if self.closed or self.close_after_flush:
            return
        try:
            self.parser.feed(data)
        except RemoteProtocolError:
            self._abort()
            return
        net = self.net
        if net.journal is not None or len(net.connections) > DIRECT_WRITE_MAX_CONNECTIONS:
            self._process()
            return
        # In memory there is no journal to commit before answering: with few clients,
        # write this read's replies now, which saves an event-loop turn per request
        # (one-round-trip PUSH ~10% faster). With many, the end-of-turn flush is cheaper:
        # replying at once makes busy clients send smaller batches (measured: 50
        # connections pushing lost ~10% that way).
        self.direct = True
        try:
            self._process()
        finally:
            self.direct = False
        if self.out:
            self.flush_out()

    def eof_received(self) -> bool | None:
        """The client stopped sending: answer what it sent, then close."""
        # The client finished sending; answer what it sent, then close.
        self.close_after_flush = True
        if self.waiter is not None:
            self.net.core.remove_waiter(self.waiter)
        self.net.dirty.add(self)
        self.net.schedule_flush()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection: its blocked FETCH, its timers, its part of a worker."""
        self.closed = True
        self.out.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiter is not None:
            self.net.core.remove_waiter(self.waiter)
            self.waiter = None
        net = self.net
        net.connections.pop(self.conn_id, None)
        net.core.connections = len(net.connections)
        if self.session.wid:
            net.core.unregister(self.session.wid, self.conn_id)

    def pause_writing(self) -> None:
        """The client does not read its replies: stop reading its commands."""
        self.write_paused = True
        self._set_read_paused(True)

    def resume_writing(self) -> None:
        """The client caught up: read its commands again."""
        self.write_paused = False
        self._set_read_paused(False)

    # -- commands -------------------------------------------------------------------------

    def _process(self) -> None:
        """Run buffered commands until one blocks, the connection closes, or none is left."""
        session = self.session
        parser = self.parser
        while not self.closed and not self.close_after_flush and self.waiter is None:
            try:
                cmd = parser.next_command()
            except RemoteProtocolError as exc:
                self._abort(str(exc))
                return
            if cmd is None:
                break
            try:
                outcome = session.handle(cmd)
            except Exception:  # a bug must cost one connection, never the server
                log.exception("internal error handling %s", cmd.verb)
                self._send(encode_error("internal error"))
                continue
            if outcome.reply is not None:
                self._send(outcome.reply)
            if outcome.action == CLOSE:
                self.close_after_flush = True
                self.net.dirty.add(self)
                self.net.schedule_flush()
                break
            if outcome.action == WAIT:
                self._block_fetch()
                break
            if session.greeted and self.timer is not None and self.waiter is None:
                self.timer.cancel()
                self.timer = None
        if self.waiter is not None and parser.buffered > self.net.max_line:
            # Pipelined behind a blocked FETCH for too long: stop taking more.
            self._set_read_paused(True)
        elif self.read_paused and not self.write_paused:
            self._set_read_paused(False)

    def _block_fetch(self) -> None:
        session = self.session
        waiter = Waiter(session.fetch_queues, session.wid, self._deliver, self._alive)
        self.waiter = waiter
        if not session.quiet_fetch:
            self.net.core.add_waiter(waiter)
        # Reading goes on while blocked, so a client that goes away is noticed at once.
        self.timer = self.net.loop.call_later(self.net.fetch_hold, self._fetch_hold_over)

    def _alive(self) -> bool:
        return (
            not self.closed
            and not self.close_after_flush
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def _deliver(self, res: Reservation) -> None:
        if not self._alive():
            # Gone between the check and now: the job goes back first in line.
            self.net.core.return_to_front(res)
            return
        self._send(encode_bulk(res.data))
        self._unblock()

    def _fetch_hold_over(self) -> None:
        self.timer = None
        if self.waiter is None:
            return
        self.net.core.remove_waiter(self.waiter)
        self._send(NULL)
        self._unblock()

    def _unblock(self) -> None:
        self.waiter = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # Not from inside the core's call stack: run the pipelined rest on the next turn.
        self.net.loop.call_soon(self._process)

    def _handshake_timeout(self) -> None:
        self.timer = None
        if not self.session.greeted and not self.closed:
            self._close_now()

    # -- output ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        self.out.append(data)
        if not self.direct:
            self.net.dirty.add(self)
            self.net.schedule_flush()

    def flush_out(self) -> None:
        """Write the queued replies in one go (and close, if the connection is ending)."""
        transport = self.transport
        if transport is None or self.closed:
            return
        if self.out:
            data = b"".join(self.out)
            self.out.clear()
            transport.write(data)
        if self.close_after_flush:
            self._close_now()

    def _abort(self, message: str | None = None) -> None:
        """Bad bytes: ``-ERR`` (only once greeted, like Faktory) and close."""
        if message and self.session.greeted:
            self._send(encode_error(message))
        self.close_after_flush = True
        self.net.dirty.add(self)
        self.net.schedule_flush()

    def _close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _set_read_paused(self, paused: bool) -> None:
        """Stop (``paused``) or restart reading this connection's commands, once each."""
        if self.read_paused == paused or self.transport is None or self.closed:
            return
        self.read_paused = paused
        try:
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()
        except (RuntimeError, AttributeError):
            # The transport is closing (or cannot pause): the flag keeps its old value.
            self.read_paused = not paused

    def close_from_server(self) -> None:
        """The server forgets this connection's worker, or stops."""
        self.flush_out()
        self._close_now()


@dataclass(eq=False)
class Network:
    """The listening socket, the connections, the batching of commits and replies."""

    core: ServerCore
    loop: asyncio.AbstractEventLoop
    _: KW_ONLY
    password: str | None
    journal: SqliteJournal | None
    max_connections: int
    max_line: int
    fetch_hold: float = FETCH_HOLD
    connections: dict[int, ServerProtocol] = field(default_factory=dict, init=False)
    #: Every connection's reads land here first (see ServerProtocol).
    read_buffer: memoryview = field(
        default_factory=lambda: memoryview(bytearray(READ_BUFFER_SIZE)), init=False
    )
    dirty: set[ServerProtocol] = field(default_factory=set, init=False)
    on_flush: Callable[[], None] | None = field(default=None, init=False)
    _flush_scheduled: bool = field(default=False, init=False)
    _next_id: int = field(default=1, init=False)
    _server: asyncio.Server | None = field(default=None, init=False)
    _ticker: asyncio.TimerHandle | None = field(default=None, init=False)

    def _new_protocol(self) -> ServerProtocol:
        conn_id = self._next_id
        self._next_id += 1
        return ServerProtocol(self, conn_id)

    async def listen(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> tuple[str, int]:
        """Listen on ``host:port`` (TLS with ``ssl_context``), start the periodic tasks,
        and return the address really bound (port 0 picks a free one)."""
        self._server = await self.loop.create_server(
            self._new_protocol, host, port, ssl=ssl_context, reuse_address=True, backlog=1024
        )
        sockname = self._server.sockets[0].getsockname()
        self._ticker = self.loop.call_later(TICK_INTERVAL, self._tick)
        return str(sockname[0]), int(sockname[1])

    def schedule_flush(self) -> None:
        """Make sure :meth:`flush` runs once at the end of this loop turn."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Commit the journal, then send every queued reply."""
        self._flush_scheduled = False
        if self.journal is not None and self.journal.pending:
            try:
                self.journal.commit()
            except Exception:
                # Nothing may be acknowledged that is not stored: drop these clients.
                log.exception("storage commit failed; closing the affected connections")
                for conn in list(self.dirty):
                    conn.out.clear()
                    conn.close_from_server()
                self.dirty.clear()
                return
        dirty = self.dirty
        self.dirty = set()
        for conn in dirty:
            conn.flush_out()

    def tick_now(self) -> None:
        """Run the periodic tasks now (due jobs, reaper, silent workers) and close the
        connections of the workers the core forgot."""
        for conn_id in self.core.tick():
            conn = self.connections.get(conn_id)
            if conn is not None:
                conn.close_from_server()
        self.schedule_flush()

    def _tick(self) -> None:
        try:
            self.tick_now()
        except Exception:
            log.exception("periodic task failed")
        self._ticker = self.loop.call_later(TICK_INTERVAL, self._tick)

    async def close(self) -> None:
        """Stop the timers and the listener, send what is queued, close every connection."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._server is not None:
            self._server.close()
        self.flush()
        for conn in list(self.connections.values()):
            conn.close_from_server()
        # Let the transports run their close callbacks; one whose client stopped reading
        # would wait for its buffer forever, so what is left after that is aborted.
        await asyncio.sleep(0)
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        if self._server is not None:
            server, self._server = self._server, None
            try:
                await asyncio.wait_for(server.wait_closed(), _CLOSE_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("some connections were still closing when the server stopped")
