"""What :class:`~kaffi.client.Client` and :class:`~kaffi.client.AsyncClient` share: every
command, written once.

How one definition serves both clients. Each command is one method of
:class:`ClientBase`, decorated with :class:`command`, that builds its :data:`Request` (the
line, whether it may be retried, its read deadline, the reply's decoder) and ends in
``return self._request(request)``. Only ``_request`` differs: :class:`~kaffi.client.Client`'s
sends the line and returns the decoded reply; :class:`~kaffi.client.AsyncClient`'s is a
coroutine. When each client class is created (``ClientBase.__init_subclass__``), the
sync client takes every command method as it is, and the asyncio client wraps each in a
coroutine function (so that a bad argument is raised where the call is awaited, as it
always was). :class:`command` is also what tells the type checker that
``Client.push(...)`` returns a ``str`` and ``AsyncClient.push(...)`` a coroutine of one.

What needs more than one round trip (``push_bulk``'s pipelined PUSHB, ``send("END")``,
the retry of a failed command) is written once as a *plan* (:mod:`kaffi.client.plans`):
a generator that yields each I/O step as a call and is sent its result;
``self._run(plan)`` runs it with the client's driver.

Why not the async client as the source and a generated sync copy (unasync, as httpcore
does)? That keeps two copies of every method in the repository, plus a generator script
and a check that they agree; here there is one copy and nothing to generate, at the same
speed. Measured (client CPU per call, the two versions interleaved in one process against
one ``kaffi server``, median of 60 rounds of 1,000): ``Client.push`` of a pre-encoded job
15.71 µs against 15.70 µs for the hand-written methods before, ``AsyncClient.push``
41.1 µs against 40.0 µs (it also gained the pre-encoded fast path ``Client.push`` had).

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
import inspect
import json
import ssl
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeAlias, TypeVar, overload

from kaffi.client.batch import CallbackLike, batch_definition
from kaffi.client.config import ConnectionSettings, resolve_settings
from kaffi.client.job import as_payload
from kaffi.client.plans import (
    BULK_IN_FLIGHT,
    PUSHB_CHUNK,
    BulkChunks,
    BulkJob,
    JobLike,
    Plan,
    PushbPipeline,
    SentChunk,
    retry_once,
    run_plan,
    run_plan_async,
)
from kaffi.errors import (
    ConfigurationError,
    ValidationError,
)
from kaffi.protocol.batches import (
    BatchDefinition,
    BatchStatus,
    batch_new_document,
    check_bid,
    current_bid,
    join_model,
)
from kaffi.protocol.commands import (
    decode_batch_status,
    decode_beat,
    decode_bid,
    decode_fetch,
    decode_info,
    decode_latency,
    decode_ok,
    decode_progress,
    encode_ack,
    encode_batch,
    encode_beat,
    encode_fail,
    encode_fetch,
    encode_flush,
    encode_info,
    encode_line,
    encode_push,
    encode_queue,
    encode_track,
    format_exception_backtrace,
    raise_for_error,
)
from kaffi.protocol.connection import OK_REPLY
from kaffi.protocol.enterprise import Progress, track_set_document
from kaffi.protocol.models import EncodedJob, Info, JobPayload, RejectedJob
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply, SimpleReply

if TYPE_CHECKING:
    from kaffi.client.pool import AsyncConnectionPool, ConnectionPool

__all__ = [
    "ClientBase",
    "BlockingCommands",
    "AwaitedCommands",
    "command",
    "Outcome",
    "Request",
    "Plan",
    "run_plan",
    "run_plan_async",
    "retry_once",
    "BulkChunks",
    "SentChunk",
    "BULK_IN_FLIGHT",
    "PUSHB_CHUNK",
    "DEFAULT_POOL_TIMEOUT",
    "FETCH_TIMEOUT_FLOOR",
    "JobLike",
    "BulkJob",
]

#: How long borrowing a pooled connection may wait.
DEFAULT_POOL_TIMEOUT = 10.0
#: The server holds an empty FETCH for about 2 s; FETCH's read deadline never goes below this.
FETCH_TIMEOUT_FLOOR = 5.0


T = TypeVar("T")
P = ParamSpec("P")
JobT = TypeVar("JobT")
MutationT = TypeVar("MutationT")

#: A command's request: its line, whether it may be retried, its read deadline (None:
#: the connection's), the reply's decoder and the decoder's second argument.
Request: TypeAlias = tuple[bytes, bool, "float | None", Callable[[Reply, Any], T], Any]


class Outcome(Generic[T]):
    """What a command method returns, as :class:`ClientBase` sees it: ``T`` itself on a
    :class:`BlockingCommands` client, an awaitable of ``T`` on an
    :class:`AwaitedCommands` one. Only for the type checker (never instantiated);
    :class:`command` gives each client class its precise type."""


class BlockingCommands:
    """Marks a client whose commands return their value (:class:`~kaffi.client.Client`);
    for the type checker (see :meth:`command.__get__`)."""


class AwaitedCommands:
    """Marks a client whose commands are coroutines (:class:`~kaffi.client.AsyncClient`);
    for the type checker."""


class command(Generic[P, T]):
    """A command method written once for both clients (see the module docstring).

    Decorates a method of :class:`ClientBase` that ends in ``return self._request(request)``
    or ``return self._run(plan)``. On a :class:`BlockingCommands` client it returns
    ``T``; on an :class:`AwaitedCommands` client it is a coroutine of ``T``.
    """

    def __init__(self, method: Callable[Concatenate[Any, P], Outcome[T]]) -> None:
        self.method: Callable[..., Any] = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> command[P, T]: ...
    @overload
    def __get__(self, obj: BlockingCommands, owner: type[Any]) -> Callable[P, T]: ...
    @overload
    def __get__(
        self, obj: AwaitedCommands, owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: object, owner: type[Any]) -> Any:
        # Only reached on a class that __init_subclass__ did not see (ClientBase itself).
        if obj is None:
            return self
        return self.made_for(type(obj)).__get__(obj, owner)

    def made_for(self, client_class: type[Any]) -> Callable[..., Any]:
        """The method as ``client_class`` has it (see ``_command_method``)."""
        made: Callable[..., Any] = client_class._command_method(self.method)
        return made


class ClientBase(abc.ABC, Generic[JobT, MutationT]):
    """Both clients: the arguments (see :class:`~kaffi.client.Client`), where to connect,
    who they are (wid, labels), the pool, ``repr()``, and every command. Each subclass
    builds its own kind of pool and sends a line with its own ``_request``."""

    pool: ConnectionPool | AsyncConnectionPool
    #: The job builder and MUTATE view classes of this kind of client.
    _job_type: Callable[..., JobT]
    _mutation_type: Callable[[Any, str], MutationT]

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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls._command_method, "__isabstractmethod__", False):
            return  # a kind of client still to be made concrete
        for name in dir(cls):
            found = inspect.getattr_static(cls, name)
            if isinstance(found, command):
                setattr(cls, name, found.made_for(cls))

    @staticmethod
    @abc.abstractmethod
    def _command_method(method: Callable[..., Any]) -> Callable[..., Any]:
        """How this kind of client has a command ``method`` of this class: as it is (its
        ``_request`` returns the value), or wrapped in a coroutine function."""

    @abc.abstractmethod
    def _request(self, request: Request[T]) -> Outcome[T]:
        """The one path every command takes: send the request's line on a pooled
        connection (sent once more under the rule above if it may be retried) and
        return its decoded reply."""

    @abc.abstractmethod
    def _run(self, plan: Plan[T]) -> Outcome[T]:
        """Run ``plan`` with this client's driver and return what it returns."""

    @abc.abstractmethod
    def _new_pool(
        self, size: int, timeout: float, hostname: str | None
    ) -> ConnectionPool | AsyncConnectionPool:
        """The pool of this client's kind of connection (each subclass builds its own)."""

    def __repr__(self) -> str:
        # settings.url never holds the password; the pool's repr shows only counts.
        wid = f" wid={self.wid}" if self.wid else ""
        return f"<{type(self).__name__} {self.settings.url}{wid} {self.pool!r}>"

    # -- jobs -------------------------------------------------------------------------

    def job(self, jobtype: str, *args: Any) -> JobT:
        """A job builder bound to this client; set attributes, then ``.push()``."""
        return self._job_type(jobtype, *args, client=self)

    @command
    def push(self, job: JobLike) -> Outcome[str]:
        """PUSH one job (a Job, a JobPayload or a dict, validated locally); returns its jid.

        If the connection fails before the server answers, the job is sent once more on a
        new connection with the same jid: delivery is at least once.
        """
        # An EncodedJob (every .delay()) needs no conversion: skip the calls. Inside a
        # batch's block, anything else joins the batch (kaffi.client.batch).
        payload = job if type(job) is EncodedJob else as_payload(job)
        bid = current_bid.get()
        if bid is not None:
            payload = join_model(payload, bid)
        return self._request((encode_push(payload), True, None, _pushed, payload))

    @command
    def push_bulk(self, jobs: Iterable[JobLike]) -> Outcome[list[RejectedJob]]:
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
        # Inside a batch's block every job joins the batch (kaffi.client.batch).
        return self._run(self._push_bulk(jobs, current_bid.get()))

    def _push_bulk(self, jobs: Iterable[JobLike], bid: str | None) -> Plan[list[RejectedJob]]:
        chunks = BulkChunks(jobs, bid)
        pipeline = PushbPipeline(self.pool)
        rejected: list[RejectedJob] = []
        try:
            for chunk, line in chunks:
                yield from pipeline.send(chunk, line)
                if len(pipeline.in_flight) >= BULK_IN_FLIGHT:
                    rejected.extend((yield from pipeline.receive()))
        except ValidationError as exc:
            # Found before any byte of its chunk was written: report it after collecting
            # the replies to what was already sent.
            rejected.extend((yield from pipeline.finish()))
            raise chunks.error(exc, rejected) from None
        except BaseException:
            yield from pipeline.abort()
            raise
        rejected.extend((yield from pipeline.finish()))
        return rejected

    @command
    def fetch(self, *queues: str) -> Outcome[JobPayload | None]:
        """FETCH from ``queues`` (tried in order; ``"default"`` when none are given).

        Returns a job, or None after the server's ~2 s wait. Never retried: a lost reply
        may have held a job the server reserved for us.
        """
        line = encode_fetch(*(queues or ("default",)))
        return self._request((line, False, self._fetch_timeout, _fetched, None))

    @command
    def ack(self, jid: str) -> Outcome[None]:
        """ACK: the job succeeded."""
        return self._request((encode_ack(check_jid(jid)), True, None, decode_ok, "ACK"))

    @command
    def fail(
        self,
        jid: str,
        exc: BaseException | None = None,
        *,
        errtype: str | None = None,
        message: str | None = None,
        backtrace: Sequence[str] | None = None,
    ) -> Outcome[None]:
        """FAIL: the job failed, from an exception (errtype = its class name, message =
        ``str(exc)``, backtrace from its traceback, innermost frame first) and/or the
        explicit ``errtype``/``message``/``backtrace``, which win. Never retried."""
        line = fail_line(jid, exc, errtype, message, backtrace)
        return self._request((line, False, None, decode_ok, "FAIL"))

    @command
    def beat(self, current_state: str | None = None, rss_kb: int | None = None) -> Outcome[str]:
        """BEAT for this client's wid: "OK", or the state the server asks for ("quiet" or
        "terminate"). ``current_state`` reports ours ("quiet"/"terminate")."""
        line = encode_beat(require_wid(self.wid), current_state, rss_kb)
        return self._request((line, True, None, _beat, None))

    # -- server -----------------------------------------------------------------------

    @command
    def send(self, command: str | bytes, arg: str | None = None) -> Outcome[str | None]:
        """Send a raw command and return the reply's text (None for a null bulk reply).

        ``send("INFO")``, ``send("QUEUE", "PAUSE critical")`` or a whole line such as
        ``send('ACK {"jid":"..."}')``. ``-ERR`` raises ServerError. Never retried.
        """
        return self._run(self._send(raw_line(command, arg)))

    def _send(self, line: bytes) -> Plan[str | None]:
        pool = self.pool
        if line.split(b" ", 1)[0].strip().upper() == b"END":
            # END gets no reply: the server just closes the connection.
            conn = yield pool.acquire
            yield lambda: pool.release(conn, discard=True)
            return None
        reply = yield lambda: self._request((line, False, None, _as_is, None))
        return decode_raw(reply, line)

    @command
    def info(self) -> Outcome[Info]:
        """INFO: queues, set sizes and server details (``.raw`` has the whole document)."""
        return self._request((encode_info(), True, None, _info, None))

    @command
    def flush(self) -> Outcome[None]:
        """FLUSH: delete every job in every queue and set. For tests and development."""
        return self._request((encode_flush(), True, None, decode_ok, "FLUSH"))

    @command
    def queue_pause(self, *names: str) -> Outcome[None]:
        """Stop handing out jobs from these queues (``"*"``: all)."""
        line = encode_queue("PAUSE", *names)
        return self._request((line, True, None, decode_ok, "QUEUE PAUSE"))

    @command
    def queue_resume(self, *names: str) -> Outcome[None]:
        """Hand out jobs from these paused queues again (``"*"``: all)."""
        line = encode_queue("RESUME", *names)
        return self._request((line, True, None, decode_ok, "QUEUE RESUME"))

    @command
    def queue_remove(self, *names: str) -> Outcome[None]:
        """Delete these queues and their jobs (``"*"``: all)."""
        line = encode_queue("REMOVE", *names)
        return self._request((line, True, None, decode_ok, "QUEUE REMOVE"))

    @command
    def queue_latency(self, *names: str) -> Outcome[dict[str, float]]:
        """Seconds the oldest job of each queue has waited."""
        return self._request((encode_queue("LATENCY", *names), True, None, _latency, None))

    # -- Faktory Enterprise -----------------------------------------------------------------

    @command
    def track_set(
        self,
        jid: str,
        *,
        percent: int | None = None,
        desc: str | None = None,
        reserve_until: datetime | timedelta | None = None,
    ) -> Outcome[None]:
        """TRACK SET (Faktory Enterprise): record a job's progress (``percent`` 0 to 100,
        ``desc``) and/or extend its reservation to ``reserve_until`` (a datetime, or a
        timedelta from now). Idempotent, so retried. An open-source server raises
        :class:`~kaffi.errors.EnterpriseRequired`."""
        line = encode_track("SET", track_set_document(jid, percent, desc, reserve_until))
        return self._request((line, True, None, decode_ok, "TRACK SET"))

    @command
    def track_get(self, jid: str) -> Outcome[Progress]:
        """TRACK GET (Faktory Enterprise): the job's progress, typed (a ``Progress``)."""
        return self._request((encode_track("GET", check_jid(jid)), True, None, _progress, None))

    @command
    def batch_new(
        self,
        definition: BatchDefinition | None = None,
        *,
        description: str | None = None,
        parent_bid: str | None = None,
        success: CallbackLike | None = None,
        complete: CallbackLike | None = None,
    ) -> Outcome[str]:
        """BATCH NEW (Faktory Enterprise): create a batch; returns its id (the bid).

        Give a :class:`~kaffi.protocol.batches.BatchDefinition`, or its fields: the
        ``success`` and/or ``complete`` callback (a Job builder such as
        ``task.job(...)``, a JobPayload or a dict; at least one), a ``description`` and
        the ``parent_bid`` of the batch this one is a child of. Jobs join the batch by
        carrying ``custom.bid`` (the app's ``with app.batch(...)`` does that); the
        callbacks fire once it is committed (:meth:`batch_commit`). Never retried: a
        second NEW would create a second batch. An open-source server raises
        :class:`~kaffi.errors.EnterpriseRequired`; an unknown ``parent_bid``
        :class:`~kaffi.errors.BatchNotFound`."""
        if definition is None:
            definition = batch_definition(
                description=description, parent_bid=parent_bid, success=success, complete=complete
            )
        elif any(given is not None for given in (description, parent_bid, success, complete)):
            raise ValidationError(
                "batch_new: give a BatchDefinition or its fields (description, parent_bid,"
                " success, complete), not both",
                field="definition",
            )
        line = encode_batch("NEW", batch_new_document(definition))
        return self._request((line, False, None, decode_bid, "BATCH NEW"))

    @command
    def batch_open(self, bid: str) -> Outcome[str]:
        """BATCH OPEN (Faktory Enterprise): reopen batch ``bid`` to add jobs (or child
        batches) to it, then :meth:`batch_commit` it again; returns the bid. An unknown
        (or expired) batch raises :class:`~kaffi.errors.BatchNotFound`."""
        line = encode_batch("OPEN", check_bid(bid))
        return self._request((line, True, None, _opened, bid))

    @command
    def batch_commit(self, bid: str) -> Outcome[None]:
        """BATCH COMMIT (Faktory Enterprise): the batch has all its jobs; its callbacks
        fire once they have run (at once for a batch with no jobs). Idempotent, so
        retried. An unknown batch raises :class:`~kaffi.errors.BatchNotFound`."""
        line = encode_batch("COMMIT", check_bid(bid))
        return self._request((line, True, None, decode_ok, "BATCH COMMIT"))

    @command
    def batch_status(self, bid: str) -> Outcome[BatchStatus]:
        """BATCH STATUS (Faktory Enterprise): the batch's counts and callback states,
        typed (a :class:`~kaffi.protocol.batches.BatchStatus`). An unknown batch raises
        :class:`~kaffi.errors.BatchNotFound`."""
        line = encode_batch("STATUS", check_bid(bid))
        return self._request((line, True, None, _batch_status, None))

    @property
    def retries(self) -> MutationT:
        """The retry set, for MUTATE: ``client.retries.of_type("x").requeue()``."""
        return self._mutation_type(self, "retries")

    @property
    def scheduled(self) -> MutationT:
        """The scheduled set, for MUTATE."""
        return self._mutation_type(self, "scheduled")

    @property
    def dead(self) -> MutationT:
        """The dead set, for MUTATE."""
        return self._mutation_type(self, "dead")

    @command
    def _mutate(self, line: bytes) -> Outcome[None]:
        """MUTATE with the line a Mutation built; idempotent, so retried."""
        return self._request((line, True, None, decode_ok, "MUTATE"))


# -- decoders taking the (reply, argument) pair a Request names ----------------------------


def _as_is(reply: Reply, _: None) -> Reply:
    return reply


def _pushed(reply: Reply, job: JobPayload | EncodedJob) -> str:
    if reply is not OK_REPLY:
        if isinstance(reply, ErrorReply) and reply.code == "NOTUNIQUE":
            raise_for_error(reply, "PUSH", jobtype=jobtype_of(job))
        decode_ok(reply, "PUSH")
    return job.jid


def _opened(reply: Reply, bid: str) -> str:
    # The Ruby client expects +OK to OPEN and Rust/Go the bid: either means it is open.
    if isinstance(reply, SimpleReply) and reply.text == "OK":
        return bid
    return decode_bid(reply, "BATCH OPEN")


def _batch_status(reply: Reply, _: None) -> BatchStatus:
    return decode_batch_status(reply)


def _progress(reply: Reply, _: None) -> Progress:
    return decode_progress(reply)


def _fetched(reply: Reply, _: None) -> JobPayload | None:
    return decode_fetch(reply)


def _beat(reply: Reply, _: None) -> str:
    return decode_beat(reply)


def _info(reply: Reply, _: None) -> Info:
    return decode_info(reply)


def _latency(reply: Reply, _: None) -> dict[str, float]:
    return decode_latency(reply)


# -- argument checks and lines -------------------------------------------------------------


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
            backtrace = format_exception_backtrace(exc)
    if backtrace is not None and (
        isinstance(backtrace, str) or not all(isinstance(b, str) for b in backtrace)
    ):
        raise ValidationError("backtrace must be a list of strings", field="backtrace")
    return encode_fail(jid, errtype or "unknown", message or "", backtrace)


def jobtype_of(job: JobPayload | EncodedJob) -> str | None:
    """The jobtype of a job as sent (read back from an EncodedJob's JSON, which only a
    refused PUSH needs)."""
    if isinstance(job, JobPayload):
        return job.jobtype
    try:
        jobtype = json.loads(job.data).get("jobtype")
    except ValueError:
        return None
    return jobtype if isinstance(jobtype, str) else None


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
