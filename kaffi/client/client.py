"""The thread-safe, pooled Faktory client: :class:`Client`.

Every method borrows a connection from the pool, sends one command line built by
:mod:`kaffi.protocol.commands`, decodes the reply with the matching ``decode_*`` and
returns the connection. The asyncio twin, :class:`~kaffi.client.aio.AsyncClient`, shares
the helpers at the bottom of this module so both clients build the same bytes.

Retrying. A command whose connection failed (reset, closed, write error) *before any byte
of the reply arrived* is sent once more on a freshly opened connection, if repeating it is
harmless. Which commands that covers, and why:

- PUSH and PUSHB: the job keeps its jid, so the worst case is the server getting the same
  job twice: delivery is **at least once**. Faktory itself is at-least-once anyway.
- ACK, BEAT, INFO, FLUSH, QUEUE ..., MUTATE: repeating them leaves the server in the
  same state (an ACK of an already acknowledged jid answers +OK).
- never FETCH: the lost reply may have carried a job the server has now reserved for us;
  a second FETCH would reserve another, and the first would wait out its reservation.
- never FAIL: a FAIL that did arrive makes the repeat answer ``-ERR Job not found``,
  turning a success into an error; the worker has its own FAIL retry policy.
- never ``send()``: a raw command may be anything.

Timeouts are not retried (the server is alive but slow: a second try doubles the wait and
likely duplicates the work), nor is anything after part of a reply arrived, nor a failure
to connect or authenticate (an :class:`~kaffi.errors.AuthenticationError` is raised at
once: a wrong password must not turn into a reconnect storm).

This module never touches a socket (connections do) and never builds command bytes
itself (:mod:`kaffi.protocol.commands` does); it only decides which connection carries a
command, whether to retry it, and what the reply means.
"""

from __future__ import annotations

import abc
import functools
import ssl
import traceback
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from kaffi.client.config import ConnectionSettings, resolve_settings
from kaffi.client.connection import Connection
from kaffi.client.job import Job, _JobBuilder, as_payload
from kaffi.client.mutation import Mutation
from kaffi.client.pool import AsyncConnectionPool, ConnectionPool
from kaffi.errors import (
    ConfigurationError,
    ReadTimeout,
    TransportError,
    ValidationError,
    WriteTimeout,
)
from kaffi.protocol.commands import (
    decode_beat,
    decode_fetch,
    decode_info,
    decode_latency,
    decode_ok,
    decode_pushb,
    encode_ack,
    encode_beat,
    encode_fail,
    encode_fetch,
    encode_flush,
    encode_info,
    encode_line,
    encode_push,
    encode_pushb,
    encode_queue,
    raise_for_error,
)
from kaffi.protocol.models import EncodedJob, Info, JobPayload, RejectedJob
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply, SimpleReply

__all__ = [
    "Client",
    "ClientBase",
    "BulkChunks",
    "BULK_IN_FLIGHT",
    "PUSHB_CHUNK",
    "DEFAULT_POOL_TIMEOUT",
    "JobLike",
]

#: PUSHB sends at most this many jobs per command.
PUSHB_CHUNK = 1000
#: PUSHB commands ``push_bulk`` keeps unanswered: the next chunk is built and written
#: while the server stores the previous one.
BULK_IN_FLIGHT = 2
#: How long borrowing a pooled connection may wait.
DEFAULT_POOL_TIMEOUT = 10.0
#: The server holds an empty FETCH for about 2 s; FETCH's read deadline never goes below this.
FETCH_TIMEOUT_FLOOR = 5.0

JobLike = _JobBuilder | JobPayload | EncodedJob | Mapping[str, Any]
#: A job ready for PUSHB: validated (JobPayload) or validated and encoded (EncodedJob).
BulkJob = JobPayload | EncodedJob


class ClientBase(abc.ABC):
    """What :class:`Client` and :class:`~kaffi.client.AsyncClient` share: the
    arguments (see :class:`Client`), where to connect, who they are (wid, labels), the
    pool, and ``repr()``. Each subclass builds its own kind of pool."""

    pool: ConnectionPool | AsyncConnectionPool

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
        self.pool = self._new_pool(pool_size, pool_timeout, hostname)
        # A read deadline shorter than the server's ~2 s FETCH wait would time out every
        # empty FETCH: FETCH alone gets at least FETCH_TIMEOUT_FLOOR.
        self._fetch_timeout = (
            None if self.settings.timeout >= FETCH_TIMEOUT_FLOOR else FETCH_TIMEOUT_FLOOR
        )

    @abc.abstractmethod
    def _new_pool(
        self, size: int, timeout: float, hostname: str | None
    ) -> ConnectionPool | AsyncConnectionPool:
        """The pool of this client's kind of connection (each subclass builds its own)."""

    def __repr__(self) -> str:
        # settings.url never holds the password; the pool's repr shows only counts.
        wid = f" wid={self.wid}" if self.wid else ""
        return f"<{type(self).__name__} {self.settings.url}{wid} {self.pool!r}>"


class Client(ClientBase):
    """A thread-safe Faktory client over a pool of 1..``pool_size`` lazily opened connections.

    Where to connect is resolved by :func:`~kaffi.client.config.resolve_settings`: ``url``
    (``tcp://:PASSWORD@host:7419``, ``tcp+tls://`` for TLS) and ``host``/``port``/
    ``password``, else ``FAKTORY_PROVIDER``, else ``FAKTORY_URL``, else
    ``tcp://localhost:7419``; ``tls`` is an :class:`ssl.SSLContext`, True or False;
    ``settings`` (already resolved) skips all that. ``timeout`` bounds every read and
    write, ``connect_timeout`` the connect and HI/HELLO, ``pool_timeout`` the wait for a
    free connection (then :class:`~kaffi.errors.PoolTimeout`).

    With ``wid`` every pooled connection says HELLO as that worker (Faktory allows many
    connections per wid), so :meth:`fetch` and :meth:`beat` work from any of them;
    ``labels`` and ``hostname`` go into that HELLO too.

    Every method borrows a pooled connection for one command; ``-ERR`` raises
    :class:`~kaffi.errors.ServerError` and keeps the connection, a network failure throws
    it away (see the module docstring for the retry-once rule).
    """

    pool: ConnectionPool

    def _new_pool(self, size: int, timeout: float, hostname: str | None) -> ConnectionPool:
        opener = functools.partial(
            Connection.open, self.settings, wid=self.wid, labels=self.labels, hostname=hostname
        )
        return ConnectionPool(opener, size=size, timeout=timeout, label=self.settings.url)

    # -- lifecycle --------------------------------------------------------------------

    def connect(self) -> Client:
        """Open one connection (HI/HELLO) to prove the server is reachable, then pool it."""
        conn = self.pool.acquire()
        self.pool.release(conn)
        return self

    def close(self) -> None:
        """END and close the idle connections; the client can still be used afterwards."""
        self.pool.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the one path every command takes ------------------------------------------

    def _call(self, line: bytes, *, retry: bool, timeout: float | None = None) -> Reply:
        pool = self.pool
        # A command that is never retried must not run on a connection the server closed
        # moments ago; the others may: their retry covers a connection found dead.
        conn = pool.acquire(verify=not retry)
        try:
            reply = conn.request(line, timeout=timeout)
        except TransportError as exc:
            pool.release(conn, discard=True)
            if not (retry and should_retry(exc, conn.reply_started)):
                raise
        except BaseException:
            pool.release(conn, discard=True)
            raise
        else:
            pool.release(conn)
            return reply
        # Once, on a freshly opened connection (see the module docstring).
        conn = pool.acquire(fresh=True)
        try:
            reply = conn.request(line, timeout=timeout)
        except BaseException:
            pool.release(conn, discard=True)
            raise
        pool.release(conn)
        return reply

    def send(self, command: str | bytes, arg: str | None = None) -> str | None:
        """Send a raw command and return the reply's text (None for a null bulk reply).

        ``send("INFO")``, ``send("QUEUE", "PAUSE critical")`` or a whole line such as
        ``send('ACK {"jid":"..."}')``. ``-ERR`` raises ServerError. Never retried.
        """
        line = raw_line(command, arg)
        if line.split(b" ", 1)[0].strip().upper() == b"END":
            # END gets no reply: the server just closes the connection.
            conn = self.pool.acquire()
            self.pool.release(conn, discard=True)
            return None
        return decode_raw(self._call(line, retry=False), line)

    # -- jobs -------------------------------------------------------------------------

    def job(self, jobtype: str, *args: Any) -> Job:
        """A :class:`Job` builder bound to this client; set attributes, then ``.push()``."""
        return Job(jobtype, *args, client=self)

    def push(self, job: JobLike) -> str:
        """PUSH one job (a Job, a JobPayload or a dict, validated locally); returns its jid.

        If the connection fails before the server answers, the job is sent once more on a
        new connection with the same jid: delivery is at least once.
        """
        # An EncodedJob (every .delay()) needs no conversion: skip the call.
        payload = job if type(job) is EncodedJob else as_payload(job)
        decode_ok(self._call(encode_push(payload), retry=True), "PUSH")
        return payload.jid

    def push_bulk(self, jobs: Iterable[JobLike]) -> list[RejectedJob]:
        """PUSHB in chunks of 1000; returns the jobs the server refused, with its reason,
        in the order they were given.

        Jobs are validated a chunk at a time, just before the chunk is sent, and the
        next chunk is written before the reply to the last one is read (two in flight),
        so building jobs and storing them overlap. A job that fails validation raises
        ValidationError naming its position; nothing of its chunk or after it is sent,
        and the message says which earlier jobs were already pushed (none when it is in
        the first 1000). PUSHB is not atomic on the server; a chunk whose connection
        fails before any byte of its reply is sent once more, like PUSH (at least once).
        A chunk the server refuses whole (``-ERR``) raises ServerError; the chunk
        written after it may have been stored too.
        """
        chunks = BulkChunks(jobs)
        sender = _PushbPipeline(self.pool)
        rejected: list[RejectedJob] = []
        try:
            for chunk, line in chunks:
                sender.send(chunk, line)
                if len(sender.in_flight) >= BULK_IN_FLIGHT:
                    rejected.extend(sender.receive())
        except ValidationError as exc:
            # Found before any byte of its chunk was written: report it after collecting
            # the replies to what was already sent.
            rejected.extend(sender.finish())
            raise chunks.error(exc, rejected) from None
        except BaseException:
            sender.abort()
            raise
        rejected.extend(sender.finish())
        return rejected

    def fetch(self, *queues: str) -> JobPayload | None:
        """FETCH from ``queues`` (tried in order; ``"default"`` when none are given).

        Returns a job, or None after the server's ~2 s wait. Never retried: a lost reply
        may have held a job the server reserved for us.
        """
        line = encode_fetch(*(queues or ("default",)))
        return decode_fetch(self._call(line, retry=False, timeout=self._fetch_timeout))

    def ack(self, jid: str) -> None:
        """ACK: the job succeeded."""
        decode_ok(self._call(encode_ack(check_jid(jid)), retry=True), "ACK")

    def fail(
        self,
        jid: str,
        exc: BaseException | None = None,
        *,
        errtype: str | None = None,
        message: str | None = None,
        backtrace: Sequence[str] | None = None,
    ) -> None:
        """FAIL: the job failed, from an exception (errtype = its class name, message =
        ``str(exc)``, backtrace from its traceback, innermost frame first) and/or the
        explicit ``errtype``/``message``/``backtrace``, which win."""
        line = fail_line(jid, exc, errtype, message, backtrace)
        decode_ok(self._call(line, retry=False), "FAIL")

    def beat(self, current_state: str | None = None, rss_kb: int | None = None) -> str:
        """BEAT for this client's wid: "OK", or the state the server asks for ("quiet" or
        "terminate"). ``current_state`` reports ours ("quiet"/"terminate")."""
        line = encode_beat(require_wid(self.wid), current_state, rss_kb)
        return decode_beat(self._call(line, retry=True))

    # -- server -----------------------------------------------------------------------

    def info(self) -> Info:
        """INFO: queues, set sizes and server details (``.raw`` has the whole document)."""
        return decode_info(self._call(encode_info(), retry=True))

    def flush(self) -> None:
        """FLUSH: delete every job in every queue and set. For tests and development."""
        decode_ok(self._call(encode_flush(), retry=True), "FLUSH")

    def queue_pause(self, *names: str) -> None:
        """Stop handing out jobs from these queues (``"*"``: all)."""
        decode_ok(self._call(encode_queue("PAUSE", *names), retry=True), "QUEUE PAUSE")

    def queue_resume(self, *names: str) -> None:
        """Hand out jobs from these paused queues again (``"*"``: all)."""
        decode_ok(self._call(encode_queue("RESUME", *names), retry=True), "QUEUE RESUME")

    def queue_remove(self, *names: str) -> None:
        """Delete these queues and their jobs (``"*"``: all)."""
        decode_ok(self._call(encode_queue("REMOVE", *names), retry=True), "QUEUE REMOVE")

    def queue_latency(self, *names: str) -> dict[str, float]:
        """Seconds the oldest job of each queue has waited."""
        return decode_latency(self._call(encode_queue("LATENCY", *names), retry=True))

    @property
    def retries(self) -> Mutation:
        """The retry set, for MUTATE: ``client.retries.of_type("x").requeue()``."""
        return Mutation(self, "retries")

    @property
    def scheduled(self) -> Mutation:
        """The scheduled set, for MUTATE."""
        return Mutation(self, "scheduled")

    @property
    def dead(self) -> Mutation:
        """The dead set, for MUTATE."""
        return Mutation(self, "dead")

    def _mutate(self, line: bytes) -> None:
        # Called by Mutation with the line it built; MUTATE is idempotent, so retried.
        decode_ok(self._call(line, retry=True), "MUTATE")


class _PushbPipeline:
    """PUSHB chunks on one borrowed connection, at most :data:`BULK_IN_FLIGHT` unanswered.

    A transport failure before any byte of the oldest unanswered chunk's reply arrived
    sends every unanswered chunk again, once, on a fresh connection (the retry-once rule
    of the module docstring, per chunk); anything else is raised.
    """

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.conn: Connection | None = None
        #: Written, unanswered chunks: the jobs, the PUSHB line, and whether resent.
        self.in_flight: deque[_Sent] = deque()

    def send(self, chunk: list[BulkJob], line: bytes) -> None:
        sent = _Sent(chunk, line)
        if self.conn is None:
            self.conn = self.pool.acquire()
        self.in_flight.append(sent)
        try:
            self.conn.write(sent.line)
        except TransportError as exc:
            self._recover(exc)

    def receive(self) -> list[RejectedJob]:
        while True:
            assert self.conn is not None
            try:
                reply = self.conn.read_reply()
            except TransportError as exc:
                self._recover(exc)
                continue
            sent = self.in_flight.popleft()
            return decode_pushb(reply, sent.jobs)

    def finish(self) -> list[RejectedJob]:
        """Read every outstanding reply and give the connection back."""
        rejected: list[RejectedJob] = []
        try:
            while self.in_flight:
                rejected.extend(self.receive())
        except BaseException:
            self.abort()
            raise
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self.pool.release(conn)
        return rejected

    def abort(self) -> None:
        """Give the connection back, thrown away if a reply is still owed on it."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            self.pool.release(conn, discard=bool(self.in_flight) or conn.broken)

    def _recover(self, exc: TransportError) -> None:
        conn, self.conn = self.conn, None
        assert conn is not None
        self.pool.release(conn, discard=True)
        if not should_retry(exc, conn.reply_started) or any(s.resent for s in self.in_flight):
            raise exc
        for sent in self.in_flight:
            sent.resent = True
        self.conn = self.pool.acquire(fresh=True)
        try:
            self.conn.write(b"".join(sent.line for sent in self.in_flight))
        except BaseException:
            conn, self.conn = self.conn, None
            self.pool.release(conn, discard=True)
            raise


# -- shared by Client and AsyncClient --------------------------------------------------


class _Sent:
    """One PUSHB chunk written and not answered yet."""

    __slots__ = ("jobs", "line", "resent")

    def __init__(self, jobs: list[BulkJob], line: bytes) -> None:
        self.jobs = jobs
        self.line = line
        self.resent = False


class BulkChunks:
    """``push_bulk``'s jobs, validated lazily and handed out in chunks of :data:`PUSHB_CHUNK`
    (so a large bulk never holds every payload at once); counts what it handed out, to
    say precisely what was sent when a later job turns out invalid."""

    def __init__(self, jobs: Iterable[JobLike]) -> None:
        self._jobs = jobs
        #: Jobs handed out in chunks so far (each chunk is sent as soon as it is handed out).
        self.handed_out = 0

    def __iter__(self) -> Iterator[tuple[list[BulkJob], bytes]]:
        """Each chunk's jobs and its PUSHB line."""
        chunk: list[BulkJob] = []
        for job in self._jobs:
            try:
                chunk.append(as_payload(job))
            except ValidationError as exc:
                index = self.handed_out + len(chunk)
                raise ValidationError(f"push_bulk job {index}: {exc}", field=exc.field) from None
            if len(chunk) == PUSHB_CHUNK:
                yield self._encoded(chunk)
                chunk = []
        if chunk:
            yield self._encoded(chunk)

    def _encoded(self, chunk: list[BulkJob]) -> tuple[list[BulkJob], bytes]:
        try:
            line = encode_pushb(chunk)
        except ValidationError as exc:
            # A value JSON cannot carry (a NaN): the message names the job's jid.
            raise ValidationError(f"push_bulk: {exc}", field=exc.field) from None
        self.handed_out += len(chunk)
        return chunk, line

    def error(self, exc: ValidationError, rejected: list[RejectedJob]) -> ValidationError:
        """``exc``, saying which jobs were pushed before it was found."""
        if not self.handed_out:
            return ValidationError(f"{exc}; nothing was sent", field=exc.field)
        refused = ""
        if rejected:
            jids = ", ".join(r.jid for r in rejected[:5]) + (", ..." if len(rejected) > 5 else "")
            refused = f", of which the server refused {len(rejected)} ({jids})"
        return ValidationError(
            f"{exc}; jobs 0 to {self.handed_out - 1} were already pushed{refused}, "
            f"nothing from job {self.handed_out} on",
            field=exc.field,
        )


def should_retry(exc: TransportError, reply_started: bool) -> bool:
    """The retry-once rule: a dropped connection before any reply byte, not a timeout."""
    return not reply_started and not isinstance(exc, ReadTimeout | WriteTimeout)


def check_wid(wid: str | None) -> str | None:
    """``wid`` if it can name a worker (a non-empty string without spaces), else
    ConfigurationError; None (a producer) passes."""
    if wid is None:
        return None
    if not isinstance(wid, str) or not wid or any(c.isspace() for c in wid):
        raise ConfigurationError(f"wid must be a non-empty string without spaces, got {wid!r}")
    return wid


def check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """``labels`` as a tuple of strings, or ConfigurationError (a bare string included)."""
    if isinstance(labels, str):
        # labels="a" would otherwise become ("a",) by accident of iteration: be explicit.
        raise ConfigurationError(f"labels must be a sequence of strings, got the string {labels!r}")
    out = tuple(labels)
    if not all(isinstance(label, str) for label in out):
        raise ConfigurationError(f"labels must be strings, got {out!r}")
    return out


def require_wid(wid: str | None) -> str:
    """The client's wid for BEAT, or ConfigurationError saying how to give one."""
    if wid is None:
        raise ConfigurationError(
            "beat() needs a worker id: create the client with wid=... (a worker's client)"
        )
    return wid


def check_jid(jid: str) -> str:
    """``jid`` if it is a non-empty string, else ValidationError naming the field."""
    if not isinstance(jid, str) or not jid:
        raise ValidationError(f"jid must be a non-empty string, got {jid!r}", field="jid")
    return jid


def format_backtrace(exc: BaseException) -> list[str]:
    """One line per frame of ``exc``'s traceback, innermost first (``file:line in func``),
    so the server's 50-line cap keeps the frames closest to the error."""
    frames = traceback.extract_tb(exc.__traceback__)
    return [f"{frame.filename}:{frame.lineno} in {frame.name}" for frame in reversed(frames)]


def fail_line(
    jid: str,
    exc: BaseException | None,
    errtype: str | None,
    message: str | None,
    backtrace: Sequence[str] | None,
) -> bytes:
    """The FAIL line from an exception and/or explicit fields (explicit ones win)."""
    check_jid(jid)
    if exc is not None:
        if errtype is None:
            errtype = type(exc).__name__
        if message is None:
            message = str(exc)
        if backtrace is None:
            backtrace = format_backtrace(exc)
    if backtrace is not None and (
        isinstance(backtrace, str) or not all(isinstance(b, str) for b in backtrace)
    ):
        raise ValidationError("backtrace must be a list of strings", field="backtrace")
    return encode_fail(jid, errtype or "unknown", message or "", backtrace)


def raw_line(command: str | bytes, arg: str | None) -> bytes:
    """The line ``send()`` writes: a verb and an argument, or a whole line."""
    if isinstance(command, bytes):
        command = command.decode("utf-8")
    if arg is None:
        command = command.rstrip("\r\n")
        verb, sep, rest = command.partition(" ")
        return encode_line(verb, rest if sep else None)
    return encode_line(command, arg)


def decode_raw(reply: Reply, line: bytes) -> str | None:
    """``send()``'s result: the text of a simple or bulk reply; ``-ERR`` raises."""
    if isinstance(reply, SimpleReply):
        return reply.text
    if isinstance(reply, BulkReply):
        return None if reply.data is None else reply.data.decode("utf-8", errors="replace")
    assert isinstance(reply, ErrorReply)
    raise_for_error(reply, line.split(b" ", 1)[0].strip().decode("ascii", errors="replace"))
    return None
