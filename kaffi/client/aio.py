"""The asyncio side of the client: :class:`AsyncConnection` and :class:`AsyncClient`.

:class:`AsyncConnection` is the asyncio twin of :class:`~kaffi.client.connection.Connection`
over asyncio streams: the same sans-IO core, the same HI/HELLO, the same rules. It is
the asyncio transport boundary: OS errors become :class:`~kaffi.errors.TransportError`
here, and every read and write has a deadline (``asyncio.wait_for``; no 3.11-only API).

:class:`AsyncClient` has :class:`~kaffi.client.Client`'s API as coroutines and follows
the same retry rules (see :mod:`kaffi.client.client`), sharing its helpers so both send
the same bytes. A client belongs to one event loop at a time; used from a new loop it
drops the old loop's connections and opens new ones.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from kaffi.client.client import (
    DEFAULT_POOL_TIMEOUT,
    FETCH_TIMEOUT_FLOOR,
    PUSHB_CHUNK,
    JobLike,
    check_jid,
    check_labels,
    check_wid,
    decode_raw,
    fail_line,
    raw_line,
    require_wid,
    should_retry,
)
from kaffi.client.config import ConnectionSettings, resolve_settings
from kaffi.client.connection import default_hostname
from kaffi.client.job import AsyncJob, as_payload
from kaffi.client.mutation import AsyncMutation
from kaffi.client.pool import AsyncConnectionPool
from kaffi.errors import (
    ConnectError,
    ConnectTimeout,
    KaffiError,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    TransportError,
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
    encode_hello,
    encode_info,
    encode_push,
    encode_pushb,
    encode_queue,
)
from kaffi.protocol.models import Hi, Info, JobPayload, RejectedJob
from kaffi.protocol.resp import Reply, ReplyParser

__all__ = ["AsyncConnection", "AsyncClient"]

_READ_SIZE = 65536
_CLOSE_TIMEOUT = 0.5


class AsyncConnection:
    """A connected, greeted asyncio stream pair. Open with :meth:`open`; one user at a time."""

    __slots__ = (
        "_parser",
        "_reader",
        "_timeout",
        "_writer",
        "broken",
        "generation",
        "hi",
        "loop",
        "pid",
        "reply_started",
        "settings",
        "wid",
    )

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: ConnectionSettings,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = ReplyParser()
        self._timeout = settings.timeout
        self.settings = settings
        self.hi = Hi(v=2)
        self.wid: str | None = None
        self.broken = False
        self.reply_started = False
        self.pid = os.getpid()
        self.generation = 0
        self.loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        state = "broken" if self.broken else "open"
        return f"<AsyncConnection {self.settings.url} wid={self.wid!r} {state}>"

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
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    settings.host,
                    settings.port,
                    ssl=settings.tls,
                    server_hostname=settings.server_hostname if settings.tls else None,
                ),
                settings.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise ConnectTimeout(
                f"could not connect to {where} within {settings.connect_timeout:g} s"
            ) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise ConnectError(f"TLS handshake with {where} failed: {exc}") from None
        except OSError as exc:
            raise ConnectError(f"could not connect to {where}: {_describe(exc)}") from None
        conn = cls(reader, writer, settings)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.hi = decode_hi(await conn._read_reply(deadline))
            hello = encode_hello(
                conn.hi,
                hostname=hostname or default_hostname(),
                wid=wid,
                pid=os.getpid() if pid is None else pid,
                labels=labels,
                password=settings.password,
            )
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
                    f"connection to {where} failed during the handshake: {_describe(exc)}"
                ) from None
            raise
        conn.wid = wid
        return conn

    async def request(self, line: bytes, *, timeout: float | None = None) -> Reply:
        """Send one command line and return the reply (an ErrorReply included)."""
        if self.broken:
            raise ReadError(f"connection to {self.settings.url} is broken; open a new one")
        self.reply_started = False
        deadline = self.loop.time() + (self._timeout if timeout is None else timeout)
        await self._send(line, deadline)
        reply = await self._read_reply(deadline)
        if self._parser.buffered:
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
        self.reply_started = False
        deadline = self.loop.time() + (self._timeout if timeout is None else timeout)
        await self._send(b"".join(lines), deadline)
        replies = [await self._read_reply(deadline) for _ in lines]
        if self._parser.buffered:
            self.broken = True
        return replies

    def is_stale(self) -> bool:
        """True if the server closed this idle connection (seen by the event loop)."""
        if self.broken:
            return True
        reader = self._reader
        if reader.at_eof() or reader.exception() is not None or self._writer.is_closing():
            self.broken = True
            return True
        return False

    async def close(self) -> None:
        """Send END (best effort, only on a healthy connection) and close."""
        writer = self._writer
        if not self.broken and self.pid == os.getpid() and not writer.is_closing():
            try:
                writer.write(encode_end())
            except (OSError, RuntimeError):
                # Already torn down under us; END is only a courtesy.
                pass
        self.broken = True
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
        except (OSError, RuntimeError, asyncio.TimeoutError):
            # A peer that vanished, or one that never answers the TLS close: done anyway.
            pass

    def _abort(self) -> None:
        self.broken = True
        self._writer.transport.abort()

    async def _send(self, data: bytes, deadline: float) -> None:
        writer = self._writer
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size():
                # Only wait when the kernel did not take everything at once.
                await asyncio.wait_for(writer.drain(), max(deadline - self.loop.time(), 0.001))
        except asyncio.TimeoutError:
            self.broken = True
            raise WriteTimeout(
                f"{self.settings.url} did not accept our bytes within {self._timeout:g} s"
            ) from None
        except OSError as exc:
            self.broken = True
            raise WriteError(f"writing to {self.settings.url} failed: {_describe(exc)}") from None
        except BaseException:
            self.broken = True
            raise

    async def _read_reply(self, deadline: float) -> Reply:
        parser = self._parser
        try:
            reply = parser.next_reply()
            while reply is None:
                left = deadline - self.loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                data = await asyncio.wait_for(self._reader.read(_READ_SIZE), left)
                if not data:
                    raise ReadError(f"{self.settings.url} closed the connection")
                self.reply_started = True
                parser.feed(data)
                reply = parser.next_reply()
            return reply
        except asyncio.TimeoutError:
            self.broken = True
            raise ReadTimeout(f"{self.settings.url} did not answer in time") from None
        except (ReadError, RemoteProtocolError):
            self.broken = True
            raise
        except OSError as exc:
            self.broken = True
            raise ReadError(f"reading from {self.settings.url} failed: {_describe(exc)}") from None
        except BaseException:
            # Cancelled half way: the reply may still come, out of step with the next request.
            self.broken = True
            raise


def _describe(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class AsyncClient:
    """:class:`~kaffi.client.Client` for asyncio: the same arguments, the same methods as
    coroutines (``await client.push(job)``), ``async with AsyncClient() as client:``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        password: str | None = None,
        wid: str | None = None,
        labels: Sequence[str] = (),
        pool_size: int = 10,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        tls: ssl.SSLContext | bool | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
        hostname: str | None = None,
        settings: ConnectionSettings | None = None,
    ) -> None:
        self.settings = settings or resolve_settings(
            url,
            host=host,
            port=port,
            password=password,
            tls=tls,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )
        self.wid = check_wid(wid)
        self.labels = check_labels(labels)
        opener = functools.partial(
            AsyncConnection.open,
            self.settings,
            wid=self.wid,
            labels=self.labels,
            hostname=hostname,
        )
        self.pool = AsyncConnectionPool(
            opener, size=pool_size, timeout=pool_timeout, label=self.settings.url
        )
        self._fetch_timeout = (
            None if self.settings.timeout >= FETCH_TIMEOUT_FLOOR else FETCH_TIMEOUT_FLOOR
        )

    def __repr__(self) -> str:
        wid = f" wid={self.wid}" if self.wid else ""
        return f"<AsyncClient {self.settings.url}{wid} {self.pool!r}>"

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
        conn = await pool.acquire()
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
        """PUSHB in chunks of 1000; returns the refused jobs with the server's reason."""
        payloads = [as_payload(job) for job in jobs]
        rejected: list[RejectedJob] = []
        for start in range(0, len(payloads), PUSHB_CHUNK):
            chunk = payloads[start : start + PUSHB_CHUNK]
            reply = await self._call(encode_pushb(chunk), retry=True)
            rejected.extend(decode_pushb(reply, chunk))
        return rejected

    async def fetch(self, *queues: str) -> JobPayload | None:
        """FETCH from ``queues`` (``"default"`` when none); None after the server's wait."""
        line = encode_fetch(*(queues or ("default",)))
        return decode_fetch(await self._call(line, retry=False, timeout=self._fetch_timeout))

    async def ack(self, jid: str) -> None:
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
        return decode_info(await self._call(encode_info(), retry=True))

    async def flush(self) -> None:
        decode_ok(await self._call(encode_flush(), retry=True), "FLUSH")

    async def queue_pause(self, *names: str) -> None:
        decode_ok(await self._call(encode_queue("PAUSE", *names), retry=True), "QUEUE PAUSE")

    async def queue_resume(self, *names: str) -> None:
        decode_ok(await self._call(encode_queue("RESUME", *names), retry=True), "QUEUE RESUME")

    async def queue_remove(self, *names: str) -> None:
        decode_ok(await self._call(encode_queue("REMOVE", *names), retry=True), "QUEUE REMOVE")

    async def queue_latency(self, *names: str) -> dict[str, float]:
        return decode_latency(await self._call(encode_queue("LATENCY", *names), retry=True))

    @property
    def retries(self) -> AsyncMutation:
        return AsyncMutation(self, "retries")

    @property
    def scheduled(self) -> AsyncMutation:
        return AsyncMutation(self, "scheduled")

    @property
    def dead(self) -> AsyncMutation:
        return AsyncMutation(self, "dead")

    async def _mutate(self, line: bytes) -> None:
        decode_ok(await self._call(line, retry=True), "MUTATE")
