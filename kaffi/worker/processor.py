"""The slots: FETCH, run the job, ACK/FAIL pipelined with the next FETCH (the hot path).

The worker runs ``concurrency`` *slots*; each owns one connection (HELLO'd with the
worker's wid) and holds at most one job::

    FETCH -> run the job -> ACK/FAIL + FETCH (one write, one round trip) -> run ...

So at most ``concurrency`` jobs are held at once, a slot fetches only when it is free (no
prefetching that would starve long jobs), and every job after the first costs a single
round trip. A slot whose first FETCH finds nothing pauses for a small random time
(:func:`~kaffi.worker.backoff.idle_fetch_delay`) before the next, so idle workers started
together do not FETCH in lockstep. ``async def`` jobs run on the loop; plain functions
run in job threads (:mod:`kaffi.worker.threads`), with the caller's contextvars copied
into the thread.

What a job's outcome becomes
----------------------------
- success (or a middleware that did not call ``next``): ``ACK``;
- any exception, including an unknown jobtype (``UnknownJobType``), arguments that do not
  fit (``ArgumentsError``) and ``SystemExit``/``KeyboardInterrupt`` raised by the job (a
  job cannot stop the worker): ``FAIL`` with errtype = the exception's class name,
  message = ``str(exc)`` and the traceback, innermost frame first (as the Ruby and Go
  workers send it), one ``file:line in function: source`` line per frame. The job's
  ``backtrace`` field caps the number of lines; when the job does not set it, kaffi
  sends up to the server's 50, as the Ruby worker does. ``backtrace: 0`` sends none.
- What is logged and sent of the traceback starts at the user's code
  (:func:`user_traceback`): the worker's own frames that called the job are left out,
  so the user's frames come first in the FAIL and the logged traceback is theirs. A
  job that fails for a configuration reason (``UnknownJobType``, ``ArgumentsError``)
  has no user frame: it is logged as one line (its FAIL keeps kaffi's frames, which
  say where the job was refused).
- A lost connection never loses an ACK or FAIL: it is sent again on a fresh connection
  with full-jitter backoff for up to :data:`REPORT_RETRY_SECONDS`, then logged loudly
  (the job then runs again when its reservation lapses).

This module must not import :mod:`kaffi.worker.worker` or :mod:`kaffi.worker.shutdown`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from kaffi.errors import (
    ArgumentsError,
    AuthenticationError,
    RemoteProtocolError,
    ServerError,
    TransportError,
    UnknownJobType,
)
from kaffi.protocol.commands import (
    decode_fetch,
    decode_info,
    encode_ack,
    encode_fail,
    encode_info,
    format_backtrace,
)
from kaffi.protocol.models import JobPayload
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply
from kaffi.worker.backoff import BACKOFF_CAP, Backoff, idle_fetch_delay
from kaffi.worker.joblog import job_context, log_job_done
from kaffi.worker.lifecycle import RUNNING, TERMINATE

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.app.middleware import Middleware
    from kaffi.app.task import Task
    from kaffi.client.aio import AsyncConnection
    from kaffi.worker.connections import Connector
    from kaffi.worker.lifecycle import Lifecycle
    from kaffi.worker.queues import QueueOrder
    from kaffi.worker.threads import JobThreads

__all__ = [
    "REPORT_RETRY_SECONDS",
    "SHUTDOWN_ERRTYPE",
    "Processor",
    "Slot",
    "shutdown_fail",
    "user_traceback",
]

T = TypeVar("T")

log = logging.getLogger("kaffi.worker")

#: How long an ACK or FAIL is retried over fresh connections before it is given up.
REPORT_RETRY_SECONDS = 30.0
#: The least read deadline for a FETCH: the server holds an empty one for about 2 s, so a
#: short client timeout (fine for PUSH) must not turn every idle FETCH into an error.
MIN_FETCH_TIMEOUT = 7.0
#: The first wait after the server refused a FETCH (it grows with full jitter).
REFUSED_FETCH_WAIT = 1.0
#: Errtype of a job FAILed because the worker shut down before or while running it.
SHUTDOWN_ERRTYPE = "WorkerShutdown"

#: The slot a job runs in, for the thread-pool hook that records which thread runs it.
_current_slot: contextvars.ContextVar[Slot | None] = contextvars.ContextVar(
    "kaffi_worker_slot", default=None
)


#: The package's folder: frames from files under it are the worker's own.
_KAFFI_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: Failures that say the job and the worker do not fit together (no user code ran).
_CONFIGURATION_ERRORS = (UnknownJobType, ArgumentsError)


def user_traceback(exc: BaseException) -> TracebackType | None:
    """``exc``'s traceback from the first frame outside kaffi (the job, or a middleware
    of the user's), leaving out the worker's frames that led to it. None for a failure
    of configuration (``UnknownJobType``, ``ArgumentsError``: one line says it all);
    the whole traceback when no frame is the user's (a failure inside kaffi itself)."""
    if isinstance(exc, _CONFIGURATION_ERRORS):
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_KAFFI_DIR):
        tb = tb.tb_next
    return tb if tb is not None else exc.__traceback__


class Slot:
    """One of the worker's ``concurrency`` places for a job, with its own connection."""

    __slots__ = ("abandoned", "conn", "index", "job", "started", "task", "thread_id")

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: AsyncConnection | None = None
        self.job: JobPayload | None = None
        self.started = 0.0
        self.thread_id: int | None = None
        self.task: asyncio.Task[None] | None = None
        #: Set when shutdown gave up on this slot's job (already FAILed): nothing more may
        #: be reported for it.
        self.abandoned = False


@dataclass(eq=False)
class Processor:
    """The slots of one worker and everything a slot does with its connection."""

    app: App
    life: Lifecycle
    connector: Connector
    queues: QueueOrder
    _: KW_ONLY
    concurrency: int
    max_jobs: int | None
    #: The worker's own jobtypes and middleware (see Worker's options).
    registry: Mapping[str, Task[Any, Any]] | None = None
    middleware: Sequence[Middleware] = ()
    #: Called after every FETCH that brought no job (the worker's WorkerEvents).
    on_fetch_empty: Callable[[], None] | None = None
    #: Told about every job (the worker's WorkerEvents, when it observes jobs).
    on_job_started: Callable[[JobPayload], None] | None = None
    on_job_finished: Callable[[JobPayload, float, str], None] | None = None
    slots: list[Slot] = field(default_factory=list, init=False)
    #: The read deadline of a FETCH (set by the worker once its settings are known).
    fetch_timeout: float = field(default=MIN_FETCH_TIMEOUT, init=False)
    threads: JobThreads | None = field(default=None, init=False)
    _perform_job: Callable[..., Awaitable[Any]] | None = field(default=None, init=False)

    def start(self, loop: asyncio.AbstractEventLoop, threads: JobThreads) -> None:
        """Create the slots and start their loops."""
        from kaffi.app.execution import perform

        self._perform_job = perform
        self.threads = threads
        self.slots = [Slot(i) for i in range(self.concurrency)]
        self.life.live_slots = len(self.slots)
        for slot in self.slots:
            slot.task = loop.create_task(self.slot_loop(slot), name=f"kaffi-slot-{slot.index}")

    # -- the slot loop ----------------------------------------------------------------------

    async def connect_slot(self, slot: Slot) -> AsyncConnection | None:
        """A connection for ``slot``, reconnecting with backoff while running; None once
        the worker is no longer running (or the password was refused)."""
        life = self.life
        backoff = Backoff()
        while life.state == RUNNING:
            try:
                slot.conn = await self.connector.open()
                return slot.conn
            except AuthenticationError as exc:
                life.fatal_error(exc)
                return None
            except (TransportError, RemoteProtocolError) as exc:
                delay = backoff.next()
                # Logged once for the whole worker by the outage tracker (Connector.open).
                log.debug(
                    "worker %s: slot %d reconnecting in %.2fs: %s", life.wid, slot.index, delay, exc
                )
                await life.pause(delay)
            except ServerError as exc:
                delay = backoff.next()
                if slot.index == 0 or backoff.ceiling() >= BACKOFF_CAP:
                    log.warning(
                        "worker %s: the server refused HELLO (retrying in %.2fs): %s",
                        life.wid,
                        delay,
                        exc,
                    )
                await life.pause(delay)
        return None

    async def slot_loop(self, slot: Slot) -> None:
        """FETCH, run, report, until the worker stops running; then report what is left."""
        _current_slot.set(slot)
        life = self.life
        connector = self.connector
        # The ACK/FAIL of the last job, to go out in one write with the next FETCH.
        pending: bytes | None = None
        reconnect = Backoff()
        refused = Backoff(REFUSED_FETCH_WAIT, BACKOFF_CAP)
        in_step = True  # until the first empty FETCH (see idle_fetch_delay)
        try:
            while life.state == RUNNING:
                conn = slot.conn
                if conn is None or conn.broken:
                    await connector.close(conn)
                    slot.conn = None
                    conn = await self.connect_slot(slot)
                    if conn is None:
                        break
                fetch = self.queues.fetch_line()
                try:
                    if pending is not None:
                        report_reply, fetch_reply = await conn.pipeline(
                            (pending, fetch), timeout=self.fetch_timeout
                        )
                        check_report(report_reply, pending)
                        pending = None
                    else:
                        fetch_reply = await conn.request(fetch, timeout=self.fetch_timeout)
                except (TransportError, RemoteProtocolError) as exc:
                    await connector.close(conn)
                    slot.conn = None
                    if pending is not None:
                        # The report may or may not have arrived: ACK and FAIL are safe to
                        # repeat, so send it again rather than risk losing it.
                        await self.report(slot, pending)
                        pending = None
                    # Not a warning: if the server is gone, the reconnect that fails
                    # says so once for every slot (see connections.Outage).
                    log.debug(
                        "worker %s: slot %d lost its connection, reconnecting: %s",
                        life.wid,
                        slot.index,
                        exc,
                    )
                    await life.pause(reconnect.next())
                    continue
                if reconnect.attempt:
                    reconnect.reset()
                try:
                    job = self.decode_job(fetch_reply)
                except ServerError as exc:
                    # The connection is fine but the server refuses (a paused server,
                    # a proxy saying no): don't hammer it.
                    log.warning("worker %s: FETCH refused: %s", life.wid, exc)
                    await life.pause(refused.next())
                    continue
                if refused.attempt:
                    refused.reset()
                if job is None:
                    if self.on_fetch_empty is not None:
                        self.on_fetch_empty()
                    if life.burst and life.state == RUNNING:
                        await self.burst_check(slot)
                    if in_step:
                        # Idle from the start: step out of the other slots' rhythm, once.
                        in_step = False
                        await life.pause(idle_fetch_delay())
                    continue
                if isinstance(job, bytes):  # a job we cannot read: its FAIL line
                    pending = job
                    continue
                if life.state == TERMINATE:
                    # Shutdown began while this FETCH was on the wire: give the job back now.
                    await self.report(slot, shutdown_fail(job, "before the job started"))
                    break
                pending = await self.perform(slot, job)
            if pending is not None:
                await self.report(slot, pending)
        except Exception as exc:
            # A bug, not a network problem: a worker quietly losing slots would be worse
            # than one that stops and says why.
            log.exception("worker %s: slot %d crashed", life.wid, slot.index)
            life.fatal_error(exc)
        finally:
            life.live_slots -= 1
            life.check_idle()

    def decode_job(self, reply: Reply) -> JobPayload | bytes | None:
        """The fetched job, None for nothing, or the FAIL line for a job we cannot read.
        A ``-ERR`` reply raises ServerError."""
        try:
            return decode_fetch(reply)
        except RemoteProtocolError as exc:
            life = self.life
            jid = _jid_of(reply)
            if jid is None:
                log.error("worker %s: server sent an unreadable job: %s", life.wid, exc)
                return None
            log.error("worker %s: job %s is not a valid Faktory job: %s", life.wid, jid, exc)
            life.processed += 1
            life.failed += 1
            return encode_fail(jid, "InvalidJob", str(exc))

    async def perform(self, slot: Slot, job: JobPayload) -> bytes:
        """Run one job; return its ACK or FAIL line."""
        perform = self._perform_job
        assert perform is not None
        life = self.life
        slot.job = job
        slot.thread_id = None
        life.running += 1
        token = job_context.set((job.jid, job.jobtype))
        started = slot.started = time.monotonic()
        error: BaseException | None = None
        performed = True
        if self.on_job_started is not None:
            self._observe(self.on_job_started, job)
        try:
            try:
                performed = (
                    await perform(
                        self.app,
                        job,
                        run_sync=self._run_sync,
                        registry=self.registry,
                        middleware=self.middleware,
                    )
                ).performed
            except asyncio.CancelledError as exc:
                if slot.abandoned:
                    # Shutdown gave up on this job and FAILed it already.
                    if self.on_job_finished is not None:
                        duration = time.monotonic() - started
                        self._observe(self.on_job_finished, job, duration, "failed")
                    raise
                error = exc  # the job itself raised CancelledError: an ordinary failure
            # SystemExit and KeyboardInterrupt too: a job never stops the worker.
            except BaseException as exc:
                error = exc
            finally:
                life.running -= 1
                slot.job = None
            duration = time.monotonic() - started
            if self.on_job_finished is not None:
                outcome = "failed" if error is not None else "ok" if performed else "dropped"
                self._observe(self.on_job_finished, job, duration, outcome)
            life.processed += 1
            # Logged inside the job's context, so the line carries jid and jobtype.
            if error is None:
                line = encode_ack(job.jid)
                log_job_done(job.jid, job.jobtype, duration, "ack")
            else:
                life.failed += 1
                shown = user_traceback(error)
                line = fail_line(job, error, shown)
                log_job_done(job.jid, job.jobtype, duration, "fail", error, shown)
        finally:
            job_context.reset(token)
        if self.max_jobs is not None and life.processed >= self.max_jobs and not life.recycling:
            life.recycle(f"{life.processed} jobs done (max {self.max_jobs})")
        return line

    def _observe(self, callback: Callable[..., None], *args: Any) -> None:
        """Call a job observer; what it raises is logged, never the job's problem."""
        try:
            callback(*args)
        except Exception:
            log.exception("worker %s: the job observer %r failed", self.life.wid, callback)

    def _run_sync(self, fn: Callable[[], T]) -> Awaitable[T]:
        """perform()'s way to run a plain callable: a job thread, with this context.
        (A plain function handing back the threads' coroutine: no coroutine of its own
        to create and step through per job.)"""
        assert self.threads is not None
        return self.threads.run(functools.partial(_in_thread, fn))

    async def report(self, slot: Slot, line: bytes) -> None:
        """Send one ACK/FAIL on the slot's connection, retrying over fresh connections
        with full-jitter backoff for up to REPORT_RETRY_SECONDS; then log loudly."""
        life = self.life
        connector = self.connector
        deadline = time.monotonic() + REPORT_RETRY_SECONDS
        backoff = Backoff()
        while True:
            conn = slot.conn
            try:
                if conn is None or conn.broken:
                    await connector.close(conn)
                    slot.conn = None
                    conn = slot.conn = await connector.open()
                check_report(await conn.request(line), line)
                return
            except AuthenticationError as exc:
                life.fatal_error(exc)
                break
            except (TransportError, RemoteProtocolError, ServerError) as exc:
                await connector.close(slot.conn)
                slot.conn = None
                delay = backoff.next()
                if time.monotonic() + delay > deadline:
                    log.error(
                        "worker %s: GAVE UP sending %s after %.0fs: %s; the job will run again"
                        " when its reservation expires",
                        life.wid,
                        _shown(line),
                        REPORT_RETRY_SECONDS,
                        exc,
                    )
                    return
                await asyncio.sleep(delay)
        log.error("worker %s: could not send %s", life.wid, _shown(line))

    async def burst_check(self, slot: Slot) -> None:
        """Burst mode: once nothing runs and every listed queue is empty, quiet and leave.
        Every slot whose FETCH came back empty gets here at about the same time; the first
        to conclude decides for all (one INFO each at most, one log line in all)."""
        life = self.life
        if life.exit_when_idle or life.running or slot.conn is None:
            return
        try:
            info = decode_info(await slot.conn.request(encode_info()))
        except (TransportError, RemoteProtocolError, ServerError) as exc:
            log.warning("worker %s: INFO failed in burst mode: %s", life.wid, exc)
            return
        sizes = info.faktory.queues
        # exit_when_idle again: another slot may have concluded while this INFO was out.
        if (
            not life.exit_when_idle
            and life.running == 0
            and all(sizes.get(q, 0) == 0 for q in self.queues.names)
        ):
            log.info("worker %s: queues empty and nothing running: burst done", life.wid)
            life.exit_when_idle = True
            life.enter_quiet("burst: queues empty")


def fail_line(job: JobPayload, exc: BaseException, shown: TracebackType | None = None) -> bytes:
    """The FAIL for ``job``, which raised ``exc``; its backtrace is ``shown`` (what
    :func:`user_traceback` kept of ``exc``'s traceback; None: all of it, as for a
    configuration failure, whose FAIL still says where kaffi refused the job),
    innermost frame first."""
    errtype = type(exc).__name__
    if isinstance(exc, (SystemExit, KeyboardInterrupt, asyncio.CancelledError)):
        message = (
            f"the job raised {errtype}({', '.join(map(repr, exc.args))});"
            " a job cannot stop the worker, so it is failed instead"
        )
    else:
        message = str(exc) or errtype
    frames = traceback.extract_tb(shown if shown is not None else exc.__traceback__)
    backtrace = format_backtrace(frames, job.backtrace)
    return encode_fail(job.jid, errtype, message, backtrace)


def shutdown_fail(job: JobPayload, when: str) -> bytes:
    """The FAIL for a job the worker gives back because it is shutting down."""
    return encode_fail(
        job.jid,
        SHUTDOWN_ERRTYPE,
        f"worker shut down {when}; Faktory will retry it",
    )


def check_report(reply: Reply, line: bytes) -> None:
    """An ACK/FAIL answered ``-ERR`` stays answered: log it, never retry it."""
    if isinstance(reply, ErrorReply):
        log.warning(
            "server refused %s: -%s %s",
            line[:120].decode("utf-8", "replace").strip(),
            reply.code,
            reply.message,
        )


def _shown(line: bytes) -> str:
    return line[:200].decode("utf-8", "replace").strip()


def _in_thread(fn: Callable[[], T]) -> T:
    slot = _current_slot.get()
    if slot is not None:
        slot.thread_id = threading.get_ident()
    return fn()


def _jid_of(reply: Reply) -> str | None:
    if not isinstance(reply, BulkReply) or reply.data is None:
        return None
    try:
        doc = json.loads(reply.data)
    except ValueError:
        return None
    jid = doc.get("jid") if isinstance(doc, dict) else None
    return jid if isinstance(jid, str) and jid else None
