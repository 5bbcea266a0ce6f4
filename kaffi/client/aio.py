"""The asyncio side of the client: :class:`AsyncConnection` and :class:`AsyncClient`.

:class:`AsyncConnection` is the asyncio twin of :class:`~kaffi.client.connection.Connection`
over an asyncio protocol: the same sans-IO core, the same HI/HELLO, the same rules. It is
the asyncio transport boundary: OS errors become :class:`~kaffi.errors.TransportError`
here, and every read and write has a deadline (no 3.11-only API such as ``asyncio.timeout``).
A write waits on one future with a timer; reads share one lazily re-armed timer per
connection (see :meth:`AsyncConnection._read_reply`), so a reply costs no timer of its own.

:class:`AsyncClient` has :class:`~kaffi.client.Client`'s API as coroutines and follows
the same retry rules (see :mod:`kaffi.client.client`), sharing its helpers so both send
the same bytes. A client belongs to one event loop at a time; used from a new loop it
drops the old loop's connections and opens new ones.

Nothing here may block the event loop: no blocking socket call, no ``time.sleep``; the
only synchronous I/O is a zero-timeout ``select`` that checks an idle socket for EOF.
"""

from __future__ import annotations

import asyncio
import functools
import os
import select
import socket
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from kaffi.client.client import (
    BULK_IN_FLIGHT,
    BulkChunks,
    BulkJob,
    ClientBase,
    JobLike,
    _Sent,
    check_jid,
    decode_raw,
    fail_line,
    raw_line,
    require_wid,
    should_retry,
)
from kaffi.client.config import ConnectionSettings
from kaffi.client.connection import hello_line, os_error_text
from kaffi.client.job import AsyncJob, as_payload
from kaffi.client.mutation import AsyncMutation
from kaffi.client.pool import AsyncConnectionPool
from kaffi.errors import (
    UNREACHABLE_HINT,
    ConnectError,
    ConnectTimeout,
    KaffiError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TransportError,
    ValidationError,
    WriteError,
    WriteTimeout,
)
from kaffi.protocol.commands import (
    decode_beat,
    decode_fetch,
    decode_hi,
    decode_info,
    decode_latency,
    decode_ok,
    decode_pushb,
    encode_ack,
    encode_beat,
    encode_end,
    encode_fetch,
    encode_flush,
    encode_info,
    encode_push,
    encode_queue,
)
from kaffi.protocol.models import Hi, Info, JobPayload, RejectedJob
from kaffi.protocol.resp import Reply, ReplyParser

__all__ = ["AsyncConnection", "AsyncClient"]

_CLOSE_TIMEOUT = 0.5
#: Bytes read from the socket at once, into one buffer the connection keeps.
_READ_BUFFER_SIZE = 65536


class _ReplyProtocol(asyncio.BufferedProtocol):
    """Feeds whatever arrives to the reply parser and wakes the one coroutine waiting.

    A plain protocol rather than asyncio streams: a reply that is already complete costs
    no future, and a wait costs one future instead of a task per read. A buffered one:
    asyncio reads into our buffer rather than allocating a fresh 256 KiB ``bytes`` for
    every ``recv``, which glibc may serve with mmap/mremap/munmap each time (measured at
    several microseconds per reply in a worker).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._buffer = memoryview(bytearray(_READ_BUFFER_SIZE))
        self.parser = ReplyParser()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.eof = False
        self.lost: BaseException | None = None
        self.parse_error: RemoteProtocolError | None = None
        self.received = False
        #: Resolved by connection_lost: the socket is closed.
        self.gone: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._buffer[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self.parse_error is None:
            try:
                self.parser.feed(data)
            except RemoteProtocolError as exc:
                self.parse_error = exc
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
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


class AsyncConnection:
    """A connected, greeted asyncio connection. Open with :meth:`open`; one user at a time."""

    __slots__ = (
        "_protocol",
        "_read_deadline",
        "_read_timer",
        "_read_timer_at",
        "_timeout",
        "_transport",
        "broken",
        "generation",
        "hi",
        "idle_since",
        "loop",
        "pid",
        "settings",
        "wid",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        protocol: _ReplyProtocol,
        settings: ConnectionSettings,
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._timeout = settings.timeout
        #: The deadline of the read in progress (``loop.time()``), checked by the timer.
        self._read_deadline = 0.0
        #: One timer for every read (see _read_reply), and when it is due to fire.
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_timer_at = 0.0
        self.settings = settings
        self.hi = Hi(v=2)
        self.wid: str | None = None
        #: True once a transport or parse error made the byte stream untrustworthy.
        self.broken = False
        #: The process that opened it; a forked child must never use it.
        self.pid = os.getpid()
        #: Set by the pool that owns the connection.
        self.generation = 0
        self.loop = protocol.loop
        #: ``loop.time()`` when the pool last took it back (or it was opened).
        self.idle_since = self.loop.time()

    def __repr__(self) -> str:
        state = "broken" if self.broken else "open"
        return f"<AsyncConnection {self.settings.url} wid={self.wid!r} {state}>"

    @property
    def reply_started(self) -> bool:
        """Whether any byte of a reply arrived for the last request/pipeline (the retry
        rule looks at this; see :mod:`kaffi.client.client`)."""
        return self._protocol.received

    @classmethod
    async def open(
        cls,
        settings: ConnectionSettings,
        *,
        wid: str | None = None,
        labels: Sequence[str] = (),
        hostname: str | None = None,
        pid: int | None = None,
    ) -> AsyncConnection:
        """Connect, read HI, answer HELLO, all within ``connect_timeout`` (see
        :meth:`kaffi.client.connection.Connection.open` for what it raises)."""
        where = settings.url
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.connect_timeout
        protocol = _ReplyProtocol(loop)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: protocol,
                    settings.host,
                    settings.port,
                    ssl=settings.tls,
                    server_hostname=settings.server_hostname if settings.tls else None,
                ),
                settings.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectTimeout(
                f"could not connect to {where} within {settings.connect_timeout:g} s;"
                f" {UNREACHABLE_HINT}"
            ) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise ConnectError(f"TLS handshake with {where} failed: {exc}") from None
        except OSError as exc:
            raise ConnectError(
                f"could not connect to {where}: {os_error_text(exc)}; {UNREACHABLE_HINT}"
            ) from None
        assert isinstance(transport, asyncio.Transport)
        conn = cls(transport, protocol, settings)
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.hi = decode_hi(await conn._read_reply(deadline))
            hello = hello_line(conn.hi, settings, wid, labels, hostname, pid)
            await conn._send(hello, deadline)
            decode_ok(await conn._read_reply(deadline), "HELLO")
        except BaseException as exc:
            conn._abort()
            if isinstance(exc, ReadTimeout | WriteTimeout):
                raise ConnectTimeout(
                    f"{where} did not complete HI/HELLO within {settings.connect_timeout:g} s"
                ) from None
            if isinstance(exc, ReadError | WriteError):
                raise ConnectError(
                    f"{where} closed the connection during HI/HELLO: {exc}"
                ) from None
            if isinstance(exc, KaffiError):
                raise
            if isinstance(exc, OSError):
                raise ConnectError(
                    f"connection to {where} failed during the handshake: {os_error_text(exc)}"
                ) from None
            raise
        conn.wid = wid
        return conn

    async def request(self, line: bytes, *, timeout: float | None = None) -> Reply:
        """Send one command line and return the reply (an ErrorReply included)."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        self._protocol.received = False
        deadline = self.loop.time() + (self._timeout if timeout is None else timeout)
        await self._send(line, deadline)
        reply = self._ready_reply()
        if reply is None:
            reply = await self._read_reply(deadline)
        if self._protocol.parser.buffered:
            # More than we asked for: the reply stands, the connection is out of step.
            self.broken = True
        return reply

    async def pipeline(
        self, lines: Sequence[bytes], *, timeout: float | None = None
    ) -> list[Reply]:
        """Write every line in one go, then read one reply per line, in order."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        if not lines:
            return []
        self._protocol.received = False
        deadline = self.loop.time() + (self._timeout if timeout is None else timeout)
        await self._send(b"".join(lines), deadline)
        replies: list[Reply] = []
        for _ in lines:
            reply = self._ready_reply()
            if reply is None:
                reply = await self._read_reply(deadline)
            replies.append(reply)
        if self._protocol.parser.buffered:
            self.broken = True
        return replies

    async def write(self, data: bytes) -> None:
        """Write command lines without reading their replies (see
        :meth:`kaffi.client.connection.Connection.write`)."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        protocol = self._protocol
        protocol.received = protocol.parser.buffered > 0
        await self._send(data, self.loop.time() + self._timeout)

    async def read_reply(self, *, timeout: float | None = None) -> Reply:
        """Read the next reply to a command sent with :meth:`write`; ``reply_started``
        then says whether any byte of this reply had arrived when it failed."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        protocol = self._protocol
        protocol.received = protocol.parser.buffered > 0
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
        protocol = self._protocol
        if protocol.eof or protocol.parser.buffered or self._transport.is_closing():
            self.broken = True
            return True
        if not probe:
            return False
        # The loop may not have run since the server hung up (no await in between): an
        # idle socket with bytes (or EOF) waiting is stale too. A zero-timeout poll.
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                readable, _, _ = select.select((sock.fileno(),), (), (), 0)
            except (OSError, ValueError):
                readable = [True]
            if readable:
                self.broken = True
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
        if not self.broken and not transport.is_closing():
            try:
                transport.write(encode_end())
            except (OSError, RuntimeError):
                # Already torn down under us; END is only a courtesy.
                pass
        self.broken = True
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
        used from a new loop, e.g. a second ``asyncio.run()``). Nothing will ever run on a
        closed loop, so the transport cannot close itself: close its socket directly,
        which is what the loop would have done, so no file descriptor leaks."""
        self.broken = True
        self._stop_read_timer()
        transport = self._transport
        if not self.loop.is_closed():
            transport.abort()
            return
        # asyncio internals, guarded: an SSL transport wraps the socket transport.
        inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
        for layer in (transport, inner):
            if layer is None:
                continue
            sock = getattr(layer, "_sock", None)
            if sock is not None:
                sock.close()
                layer._sock = None  # type: ignore[union-attr]
            if hasattr(layer, "_closing"):
                layer._closing = True
            if hasattr(layer, "_closed"):
                layer._closed = True

    def _abort(self) -> None:
        self.broken = True
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
        except asyncio.TimeoutError:
            self.broken = True
            raise WriteTimeout(
                f"{self.settings.url} did not accept our bytes within {self._timeout:g} s"
            ) from None
        except (OSError, RuntimeError) as exc:
            self.broken = True
            text = os_error_text(exc) if isinstance(exc, OSError) else str(exc)
            raise WriteError(f"writing to {self.settings.url} failed: {text}") from None
        except BaseException:
            self.broken = True
            raise

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

    def _ready_reply(self) -> Reply | None:
        """A reply already parsed from what arrived, without a coroutine (the common case
        for the second reply of a pipeline); None when a wait is needed."""
        try:
            return self._protocol.parser.next_reply()
        except RemoteProtocolError:
            self.broken = True
            raise

    async def _read_reply(self, deadline: float) -> Reply:
        protocol = self._protocol
        try:
            reply = protocol.parser.next_reply()
            while reply is None:
                if protocol.parse_error is not None:
                    raise protocol.parse_error
                if protocol.eof:
                    lost = protocol.lost
                    if isinstance(lost, OSError):
                        raise ReadError(
                            f"reading from {self.settings.url} failed: {os_error_text(lost)}"
                        )
                    raise ReadError(f"{self.settings.url} closed the connection")
                waiter = self.loop.create_future()
                protocol.waiter = waiter
                self._arm_read_timer(deadline)
                try:
                    await waiter
                finally:
                    protocol.waiter = None
                reply = protocol.parser.next_reply()
            return reply
        except asyncio.TimeoutError:
            self.broken = True
            raise ReadTimeout(f"{self.settings.url} did not answer in time") from None
        except (ReadError, RemoteProtocolError):
            self.broken = True
            raise
        except BaseException:
            # Cancelled half way: the reply may still come, out of step with the next request.
            self.broken = True
            raise


class _AsyncPushbPipeline:
    """:class:`kaffi.client.client._PushbPipeline` for asyncio: PUSHB chunks on one
    borrowed connection, at most :data:`BULK_IN_FLIGHT` unanswered, resent once on a
    fresh connection after a failure before any byte of a reply."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.conn: AsyncConnection | None = None
        self.in_flight: deque[_Sent] = deque()

    async def send(self, chunk: list[BulkJob], line: bytes) -> None:
        sent = _Sent(chunk, line)
        if self.conn is None:
            self.conn = await self.pool.acquire()
        self.in_flight.append(sent)
        try:
            await self.conn.write(sent.line)
        except TransportError as exc:
            await self._recover(exc)

    async def receive(self) -> list[RejectedJob]:
        while True:
            assert self.conn is not None
            try:
                reply = await self.conn.read_reply()
            except TransportError as exc:
                await self._recover(exc)
                continue
            sent = self.in_flight.popleft()
            return decode_pushb(reply, sent.jobs)

    async def finish(self) -> list[RejectedJob]:
        rejected: list[RejectedJob] = []
        try:
            while self.in_flight:
                rejected.extend(await self.receive())
        except BaseException:
            await self.abort()
            raise
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await self.pool.release(conn)
        return rejected

    async def abort(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await self.pool.release(conn, discard=bool(self.in_flight) or conn.broken)

    async def _recover(self, exc: TransportError) -> None:
        conn, self.conn = self.conn, None
        assert conn is not None
        await self.pool.release(conn, discard=True)
        if not should_retry(exc, conn.reply_started) or any(s.resent for s in self.in_flight):
            raise exc
        for sent in self.in_flight:
            sent.resent = True
        self.conn = await self.pool.acquire(fresh=True)
        try:
            await self.conn.write(b"".join(sent.line for sent in self.in_flight))
        except BaseException:
            conn, self.conn = self.conn, None
            await self.pool.release(conn, discard=True)
            raise


class AsyncClient(ClientBase):
    """:class:`~kaffi.client.Client` for asyncio: the same arguments, the same methods as
    coroutines (``await client.push(job)``), ``async with AsyncClient() as client:``."""

    pool: AsyncConnectionPool

    def _new_pool(self, size: int, timeout: float, hostname: str | None) -> AsyncConnectionPool:
        opener = functools.partial(
            AsyncConnection.open,
            self.settings,
            wid=self.wid,
            labels=self.labels,
            hostname=hostname,
        )
        return AsyncConnectionPool(opener, size=size, timeout=timeout, label=self.settings.url)

    async def connect(self) -> AsyncClient:
        """Open one connection (HI/HELLO) to prove the server is reachable, then pool it."""
        conn = await self.pool.acquire()
        await self.pool.release(conn)
        return self

    async def close(self) -> None:
        """END and close the idle connections; the client can still be used afterwards."""
        await self.pool.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(self, line: bytes, *, retry: bool, timeout: float | None = None) -> Reply:
        pool = self.pool
        # As in Client._call: only commands that are never retried need a checked socket.
        conn = await pool.acquire(verify=not retry)
        try:
            reply = await conn.request(line, timeout=timeout)
        except TransportError as exc:
            await pool.release(conn, discard=True)
            if not (retry and should_retry(exc, conn.reply_started)):
                raise
        except BaseException:
            await pool.release(conn, discard=True)
            raise
        else:
            await pool.release(conn)
            return reply
        # Once, on a freshly opened connection (see kaffi.client.client's docstring).
        conn = await pool.acquire(fresh=True)
        try:
            reply = await conn.request(line, timeout=timeout)
        except BaseException:
            await pool.release(conn, discard=True)
            raise
        await pool.release(conn)
        return reply

    async def send(self, command: str | bytes, arg: str | None = None) -> str | None:
        """Send a raw command; see :meth:`kaffi.client.Client.send`. Never retried."""
        line = raw_line(command, arg)
        if line.split(b" ", 1)[0].strip().upper() == b"END":
            conn = await self.pool.acquire()
            await self.pool.release(conn, discard=True)
            return None
        return decode_raw(await self._call(line, retry=False), line)

    def job(self, jobtype: str, *args: Any) -> AsyncJob:
        """An :class:`AsyncJob` builder bound to this client; ``await job.push()``."""
        return AsyncJob(jobtype, *args, client=self)

    async def push(self, job: JobLike) -> str:
        """PUSH one job; returns its jid. Retried once like the sync client: at least once."""
        payload = as_payload(job)
        decode_ok(await self._call(encode_push(payload), retry=True), "PUSH")
        return payload.jid

    async def push_bulk(self, jobs: Iterable[JobLike]) -> list[RejectedJob]:
        """PUSHB in chunks of 1000, two in flight; returns the refused jobs with the
        server's reason. Validation, retries and errors as for
        :meth:`kaffi.client.Client.push_bulk`."""
        chunks = BulkChunks(jobs)
        sender = _AsyncPushbPipeline(self.pool)
        rejected: list[RejectedJob] = []
        try:
            for chunk, line in chunks:
                await sender.send(chunk, line)
                if len(sender.in_flight) >= BULK_IN_FLIGHT:
                    rejected.extend(await sender.receive())
        except ValidationError as exc:
            rejected.extend(await sender.finish())
            raise chunks.error(exc, rejected) from None
        except BaseException:
            await sender.abort()
            raise
        rejected.extend(await sender.finish())
        return rejected

    async def fetch(self, *queues: str) -> JobPayload | None:
        """FETCH from ``queues`` (``"default"`` when none); None after the server's wait."""
        line = encode_fetch(*(queues or ("default",)))
        return decode_fetch(await self._call(line, retry=False, timeout=self._fetch_timeout))

    async def ack(self, jid: str) -> None:
        """ACK: the job succeeded."""
        decode_ok(await self._call(encode_ack(check_jid(jid)), retry=True), "ACK")

    async def fail(
        self,
        jid: str,
        exc: BaseException | None = None,
        *,
        errtype: str | None = None,
        message: str | None = None,
        backtrace: Sequence[str] | None = None,
    ) -> None:
        """FAIL; see :meth:`kaffi.client.Client.fail`."""
        line = fail_line(jid, exc, errtype, message, backtrace)
        decode_ok(await self._call(line, retry=False), "FAIL")

    async def beat(self, current_state: str | None = None, rss_kb: int | None = None) -> str:
        """BEAT: "OK", "quiet" or "terminate"; needs the client's wid."""
        line = encode_beat(require_wid(self.wid), current_state, rss_kb)
        return decode_beat(await self._call(line, retry=True))

    async def info(self) -> Info:
        """INFO: queues, set sizes and server details (``.raw`` has the whole document)."""
        return decode_info(await self._call(encode_info(), retry=True))

    async def flush(self) -> None:
        """FLUSH: delete every job in every queue and set. For tests and development."""
        decode_ok(await self._call(encode_flush(), retry=True), "FLUSH")

    async def queue_pause(self, *names: str) -> None:
        """Stop handing out jobs from these queues (``"*"``: all)."""
        decode_ok(await self._call(encode_queue("PAUSE", *names), retry=True), "QUEUE PAUSE")

    async def queue_resume(self, *names: str) -> None:
        """Hand out jobs from these paused queues again (``"*"``: all)."""
        decode_ok(await self._call(encode_queue("RESUME", *names), retry=True), "QUEUE RESUME")

    async def queue_remove(self, *names: str) -> None:
        """Delete these queues and their jobs (``"*"``: all)."""
        decode_ok(await self._call(encode_queue("REMOVE", *names), retry=True), "QUEUE REMOVE")

    async def queue_latency(self, *names: str) -> dict[str, float]:
        """Seconds the oldest job of each queue has waited."""
        return decode_latency(await self._call(encode_queue("LATENCY", *names), retry=True))

    @property
    def retries(self) -> AsyncMutation:
        """The retry set, for MUTATE: ``await client.retries.of_type("x").requeue()``."""
        return AsyncMutation(self, "retries")

    @property
    def scheduled(self) -> AsyncMutation:
        """The scheduled set, for MUTATE."""
        return AsyncMutation(self, "scheduled")

    @property
    def dead(self) -> AsyncMutation:
        """The dead set, for MUTATE."""
        return AsyncMutation(self, "dead")

    async def _mutate(self, line: bytes) -> None:
        # Called by AsyncMutation with the line it built; MUTATE is idempotent, so retried.
        decode_ok(await self._call(line, retry=True), "MUTATE")
