"""What takes more than one round trip, written once for both clients as *plans*.

A plan is a generator that yields each I/O step as a call taking no argument (borrow a
connection, write, read a reply, give it back) and is sent each step's result, or has
its failure thrown in. :func:`run_plan` calls the steps for
:class:`~kaffi.client.Client`; :func:`run_plan_async` awaits them for
:class:`~kaffi.client.AsyncClient`, whose pool and connection methods are coroutines. A
step costs a generator resume over a direct call, so plans stay off the one-command
path; they carry the retry of a failed command (:func:`retry_once`, under the rule of
:mod:`kaffi.client.base`) and the pipelined PUSHB (:class:`PushbPipeline`).

Nothing here touches a socket or builds command bytes itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeAlias, TypeVar

from kaffi.client.job import JobBuilder, as_payload
from kaffi.errors import ReadTimeout, TransportError, ValidationError, WriteTimeout
from kaffi.protocol.batches import join_model
from kaffi.protocol.commands import decode_pushb, encode_pushb
from kaffi.protocol.models import EncodedJob, JobPayload, RejectedJob
from kaffi.protocol.resp import Reply

__all__ = [
    "Plan",
    "run_plan",
    "run_plan_async",
    "retry_once",
    "should_retry",
    "PushbPipeline",
    "BulkChunks",
    "SentChunk",
    "PUSHB_CHUNK",
    "BULK_IN_FLIGHT",
    "JobLike",
    "BulkJob",
]

T = TypeVar("T")

#: A plan: yields calls (one I/O step each), is sent their results, returns the value.
Plan: TypeAlias = Generator[Callable[[], Any], Any, T]

#: PUSHB sends at most this many jobs per command.
PUSHB_CHUNK = 1000
#: PUSHB commands ``push_bulk`` keeps unanswered: the next chunk is built and written
#: while the server stores the previous one.
BULK_IN_FLIGHT = 2
JobLike = JobBuilder | JobPayload | EncodedJob | Mapping[str, Any]
#: A job ready for PUSHB: validated (JobPayload) or validated and encoded (EncodedJob).
BulkJob = JobPayload | EncodedJob


def run_plan(plan: Plan[T]) -> T:
    """Run a plan's steps one after the other (the sync client's driver)."""
    stepper = _Stepper(plan)
    step = stepper.resume(None)
    while step is not None:
        try:
            result = step()
        except BaseException as exc:
            step = stepper.throw(exc)
        else:
            step = stepper.resume(result)
    return stepper.value


async def run_plan_async(plan: Plan[T]) -> T:
    """Run a plan's steps, awaiting each (the asyncio client's driver)."""
    stepper = _Stepper(plan)
    step = stepper.resume(None)
    while step is not None:
        try:
            outcome = await step()
        except BaseException as exc:
            step = stepper.throw(exc)
        else:
            step = stepper.resume(outcome)
    return stepper.value


class _Stepper(Generic[T]):
    """A plan being run: resumed with each step's result, or with its failure thrown in;
    ``value`` is what the plan returned, once it did (no next step)."""

    __slots__ = ("plan", "value")

    def __init__(self, plan: Plan[T]) -> None:
        self.plan = plan

    def resume(self, result: Any) -> Callable[[], Any] | None:
        try:
            return self.plan.send(result)
        except StopIteration as done:
            self.value: T = done.value
            return None

    def throw(self, failure: BaseException) -> Callable[[], Any] | None:
        try:
            return self.plan.throw(failure)
        except StopIteration as done:
            self.value = done.value
            return None


def retry_once(
    pool: Any, conn: Any, exc: BaseException, line: bytes, retry: bool, timeout: float | None
) -> Plan[Reply]:
    """What a client's ``_request`` does once ``conn.request(line)`` raised ``exc``: throw
    the connection away, then either raise ``exc`` or, under the retry-once rule of the
    module docstring, send ``line`` again on a freshly opened connection."""
    yield lambda: pool.release(conn, discard=True)
    if not (retry and isinstance(exc, TransportError) and should_retry(exc, conn.reply_started)):
        raise exc
    fresh = yield lambda: pool.acquire(fresh=True)
    try:
        reply = yield lambda: fresh.request(line, timeout=timeout)
    except BaseException:
        yield lambda: pool.release(fresh, discard=True)
        raise
    yield lambda: pool.release(fresh)
    return reply  # type: ignore[no-any-return]


def should_retry(exc: TransportError, reply_started: bool) -> bool:
    """The retry-once rule: a dropped connection before any reply byte, not a timeout."""
    return not reply_started and not isinstance(exc, ReadTimeout | WriteTimeout)


class SentChunk:
    """One PUSHB chunk written and not answered yet: its jobs, its line, whether resent."""

    __slots__ = ("jobs", "line", "resent")

    def __init__(self, jobs: list[BulkJob], line: bytes) -> None:
        self.jobs = jobs
        self.line = line
        self.resent = False


class PushbPipeline:
    """PUSHB chunks on one borrowed connection, at most :data:`BULK_IN_FLIGHT` unanswered,
    as plan steps (one copy for both clients).

    A transport failure before any byte of the oldest unanswered chunk's reply arrived
    sends every unanswered chunk again, once, on a fresh connection (the retry-once rule
    of the module docstring, per chunk); anything else is raised.
    """

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.conn: Any = None
        self.in_flight: deque[SentChunk] = deque()

    def send(self, chunk: list[BulkJob], line: bytes) -> Plan[None]:
        sent = SentChunk(chunk, line)
        if self.conn is None:
            self.conn = yield self.pool.acquire
        self.in_flight.append(sent)
        try:
            yield lambda: self.conn.write(sent.line)
        except TransportError as exc:
            yield from self._recover(exc)

    def receive(self) -> Plan[list[RejectedJob]]:
        while True:
            try:
                reply = yield self.conn.read_reply
            except TransportError as exc:
                yield from self._recover(exc)
                continue
            sent = self.in_flight.popleft()
            return decode_pushb(reply, sent.jobs)

    def finish(self) -> Plan[list[RejectedJob]]:
        """Read every outstanding reply and give the connection back."""
        rejected: list[RejectedJob] = []
        try:
            while self.in_flight:
                rejected.extend((yield from self.receive()))
        except BaseException:
            yield from self.abort()
            raise
        if self.conn is not None:
            conn, self.conn = self.conn, None
            yield lambda: self.pool.release(conn)
        return rejected

    def abort(self) -> Plan[None]:
        """Give the connection back, thrown away if a reply is still owed on it."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            discard = bool(self.in_flight) or conn.broken
            yield lambda: self.pool.release(conn, discard=discard)

    def _recover(self, exc: TransportError) -> Plan[None]:
        conn, self.conn = self.conn, None
        yield lambda: self.pool.release(conn, discard=True)
        if not should_retry(exc, conn.reply_started) or any(s.resent for s in self.in_flight):
            raise exc
        for sent in self.in_flight:
            sent.resent = True
        self.conn = yield lambda: self.pool.acquire(fresh=True)
        try:
            yield lambda: self.conn.write(b"".join(sent.line for sent in self.in_flight))
        except BaseException:
            conn, self.conn = self.conn, None
            yield lambda: self.pool.release(conn, discard=True)
            raise


class BulkChunks:
    """``push_bulk``'s jobs, validated lazily and handed out in chunks of :data:`PUSHB_CHUNK`
    (so a large bulk never holds every payload at once); counts what it handed out, to
    say precisely what was sent when a later job turns out invalid."""

    def __init__(self, jobs: Iterable[JobLike], bid: str | None = None) -> None:
        self._jobs = jobs
        #: The batch every job joins (``custom.bid``), unless it names one itself.
        self.bid = bid
        #: Jobs handed out in chunks so far (each chunk is sent as soon as it is handed out).
        self.handed_out = 0

    def __iter__(self) -> Iterator[tuple[list[BulkJob], bytes]]:
        """Each chunk's jobs and its PUSHB line."""
        chunk: list[BulkJob] = []
        bid = self.bid
        for job in self._jobs:
            try:
                chunk.append(as_payload(job) if bid is None else join_model(as_payload(job), bid))
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
