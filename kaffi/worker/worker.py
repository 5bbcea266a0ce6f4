"""The worker: fetch loop, ACK/FAIL, heartbeat lifecycle and the shutdown order.

How a worker process is built
-----------------------------
One asyncio event loop owns the network. The worker runs ``concurrency`` *slots*; each
slot owns one connection (HELLO'd with the worker's wid) and holds at most one job:

    FETCH -> run the job -> ACK/FAIL + FETCH (one write, one round trip) -> run ...

So at most ``concurrency`` jobs are held at once, a slot fetches only when it is free (no
prefetching that would starve long jobs), and every job after the first costs a single
round trip. ``async def`` jobs run on the loop; plain functions run in job threads
(:mod:`kaffi.worker.threads`), with the caller's contextvars copied into the thread
(``kaffi.current_job()`` works there). A separate connection carries BEAT, so a FETCH
blocked on the server never delays the heartbeat.

What a job's outcome becomes
----------------------------
- success (or a middleware that did not call ``next``): ``ACK``;
- any exception, including an unknown jobtype (``UnknownJobType``), arguments that do not
  fit (``ArgumentsError``) and ``SystemExit``/``KeyboardInterrupt`` raised by the job (a
  job cannot stop the worker): ``FAIL`` with errtype = the exception's class name,
  message = ``str(exc)`` and the traceback, innermost frame first (as the Ruby and Go
  workers send it), one ``file:line in function: source`` line per frame. The job's
  ``backtrace`` field caps the number of lines; when the job does not set it, kaffi
  sends up to the server's 50, as the Ruby worker does (it always sends the backtrace).
  ``backtrace: 0`` sends none.
- A lost connection never loses an ACK or FAIL: it is sent again on a fresh connection
  with capped backoff for up to :data:`REPORT_RETRY_SECONDS`, then logged loudly (the
  job then runs again when its reservation lapses).

Reaching the server
-------------------
- At start-up, before any slot exists, the heartbeat connection says HELLO. Attempts are
  repeated with a short backoff for up to the connect timeout (5 s by default); a server
  still unreachable then is a start-up failure: ``run()`` raises ``ConnectError`` naming
  the server (never the password). A refused password is raised at once.
- Once running, a lost server is an outage to ride out: every slot, the heartbeat and
  the report retries reconnect by themselves with capped backoff. The outage is logged
  once for the whole worker (:class:`_Outage`): a warning when a connect first fails, a
  reminder every :data:`OUTAGE_REMINDER_SECONDS` while it lasts, an info line when a
  connect succeeds again. A single dropped connection is only a debug line.

States (Faktory's): running -> quiet -> terminate -> stopped, only ever forward.

- *quiet* (SIGTSTP, ``worker.quiet()``, a BEAT reply ``quiet``, burst mode once the
  queues are empty, recycling): no slot starts a new FETCH; a FETCH already sent may
  still bring a job, which is run; every held job finishes and is reported.
- *terminate*: the shutdown below.

Shutdown order (SIGTERM, SIGINT, ``stop()``, a BEAT reply ``terminate``)
------------------------------------------------------------------------
1. Stop fetching: the state becomes ``terminate``; no slot sends another FETCH.
2. FETCHes already on the wire are let return (within the server's ~2 s); whatever
   they bring is FAILed at once, never left reserved by a worker that is leaving.
3. Running jobs get up to ``timeout`` seconds to finish; each is ACKed or FAILed as it
   ends. A second SIGINT skips the rest of this wait.
4. Jobs still running then (the stragglers) are FAILed with the stack they are stuck in,
   so Faktory retries them; async ones are cancelled, threads are left to die with the
   process (Python cannot kill a thread).
5. The heartbeat stops (it kept beating ``terminate`` until here, so the server knows the
   worker is alive while it drains), every connection is closed with END, and ``run()``
   returns; the command line exits 0.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

from kaffi.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectTimeout,
    KaffiError,
    RemoteProtocolError,
    ServerError,
    TransportError,
    ValidationError,
)
from kaffi.protocol.commands import (
    decode_beat,
    decode_fetch,
    decode_info,
    encode_ack,
    encode_beat,
    encode_fail,
    encode_info,
)
from kaffi.protocol.models import MAX_BACKTRACE, JobPayload
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply
from kaffi.worker.events import WorkerEvents, notify
from kaffi.worker.logging import install_record_factory, job_context, log_job_done
from kaffi.worker.queues import QueueOrder, parse_queues
from kaffi.worker.signals import SignalHandlers, format_all_stacks, signal_name
from kaffi.worker.threads import JobThreads

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.app.middleware import Middleware
    from kaffi.client.aio import AsyncConnection
    from kaffi.client.config import ConnectionSettings

__all__ = [
    "Worker",
    "REPORT_RETRY_SECONDS",
    "OUTAGE_REMINDER_SECONDS",
    "format_backtrace",
    "next_backoff",
]

T = TypeVar("T")

log = logging.getLogger("kaffi.worker")

#: How long an ACK or FAIL is retried over fresh connections before it is given up.
REPORT_RETRY_SECONDS = 30.0
#: Backoff between reconnects and report retries: doubles from the first to the cap.
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 5.0
#: How long shutdown waits, past the job timeout, for FETCHes already on the wire. The
#: server answers an empty FETCH after about 2 s; this only bounds a server that hangs.
FETCH_GRACE_SECONDS = 12.0
#: The least read deadline for a FETCH: the server holds an empty one for about 2 s, so a
#: short client timeout (fine for PUSH) must not turn every idle FETCH into an error.
MIN_FETCH_TIMEOUT = 7.0
#: While the server stays unreachable, the outage is logged again at most this often.
OUTAGE_REMINDER_SECONDS = 30.0
#: At start-up, the wait between attempts at the first connection doubles up to this.
STARTUP_BACKOFF_CAP = 1.0
#: How often the memory limit and the parent process are checked, when asked for.
MONITOR_INTERVAL = 1.0
#: Errtype of a job FAILed because the worker shut down before or while running it.
SHUTDOWN_ERRTYPE = "WorkerShutdown"

RUNNING, QUIET, TERMINATE, STOPPED = "running", "quiet", "terminate", "stopped"

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4

#: The slot a job runs in, for the thread-pool hook that records which thread runs it.
_current_slot: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "kaffi_worker_slot", default=None
)


def rss_kb() -> int:
    """This process's resident set size in KiB (what BEAT reports)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        # Not Linux: the peak RSS is the best the standard library offers.
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


def next_backoff(delay: float) -> float:
    """The wait after ``delay``: doubled, never above :data:`BACKOFF_CAP`."""
    return min(delay * 2, BACKOFF_CAP)


def format_backtrace(frames: Iterable[traceback.FrameSummary], limit: int | None) -> list[str]:
    """``file:line in function: source`` per frame, innermost first, at most ``limit``
    lines (None: the server's 50)."""
    cap = MAX_BACKTRACE if limit is None else max(0, min(limit, MAX_BACKTRACE))
    if cap == 0:
        return []
    lines = []
    for fs in reversed(list(frames)):
        source = f": {fs.line.strip()}" if fs.line else ""
        lines.append(f"{fs.filename}:{fs.lineno} in {fs.name}{source}")
        if len(lines) == cap:
            break
    return lines


def _coroutine_frames(coro: object) -> list[FrameType]:
    """The frames of a suspended coroutine chain, outermost first (Task.get_stack gives
    only the outermost one)."""
    frames: list[FrameType] = []
    seen = 0
    while coro is not None and seen < 200:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


async def _close(conn: AsyncConnection | None) -> None:
    if conn is None:
        return
    try:
        await conn.close()
    except (KaffiError, OSError) as exc:
        log.debug("closing %r: %s", conn, exc)


class _Outage:
    """Whether the worker reaches its server, so an outage is logged once per worker, not
    once per slot and attempt.

    Every connect (slots, heartbeat, report retries) tells it how it went: the first
    failure logs a warning, further failures a reminder at most every
    :data:`OUTAGE_REMINDER_SECONDS`, and the first success after that an info line. A
    failed connect that began before the server came back is a leftover of the outage
    that just ended, not a new one. No I/O; ``clock`` is there for tests.
    """

    __slots__ = ("_clock", "_reminded", "_up_since", "down_since", "failures", "url", "wid")

    def __init__(self, wid: str, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.wid = wid
        self.url = url
        self._clock = clock
        #: When the first connect of the current outage failed; None while reachable.
        self.down_since: float | None = None
        #: Failed connects in the current outage.
        self.failures = 0
        self._reminded = 0.0
        self._up_since = float("-inf")

    def now(self) -> float:
        """The clock the outage is measured with (a connect attempt notes its start)."""
        return self._clock()

    def connect_failed(self, exc: BaseException, attempt_started: float) -> None:
        """A connect that began at ``attempt_started`` failed with ``exc``."""
        now = self._clock()
        if self.down_since is None:
            if attempt_started < self._up_since:
                log.debug(
                    "worker %s: a connect from before the server came back failed: %s",
                    self.wid,
                    exc,
                )
                return
            self.down_since = self._reminded = now
            self.failures = 1
            log.warning(
                "worker %s: cannot reach the Faktory server at %s (%s); jobs wait while the"
                " worker reconnects by itself, backing off up to %gs",
                self.wid,
                self.url,
                exc,
                BACKOFF_CAP,
            )
            return
        self.failures += 1
        if now - self._reminded >= OUTAGE_REMINDER_SECONDS:
            self._reminded = now
            log.warning(
                "worker %s: the Faktory server at %s is still unreachable after %.0fs"
                " (%d failed connects): %s",
                self.wid,
                self.url,
                now - self.down_since,
                self.failures,
                exc,
            )
        else:
            log.debug("worker %s: connect failed again: %s", self.wid, exc)

    def connected(self) -> None:
        """A connect succeeded: ends the outage, if there was one."""
        if self.down_since is None:
            return
        now = self._clock()
        log.info(
            "worker %s: the Faktory server at %s is back after %.1fs; carrying on",
            self.wid,
            self.url,
            now - self.down_since,
        )
        self.down_since = None
        self.failures = 0
        self._up_since = now


class _Slot:
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


class Worker:
    """Runs an :class:`~kaffi.App`'s tasks. Build it with ``app.worker(**options)``.

    Options:

    - ``queues``: names in strict order, or ``"critical:3,default:1"`` for a weighted
      random order per fetch (a string or a list of such items);
    - ``concurrency``: jobs held at once (slots, and threads for plain functions);
    - ``pool_size``: the most connections held at once (default concurrency + 2, as in
      the seed; the worker uses one per slot and one for the heartbeat);
    - ``timeout``: seconds running jobs get to finish at shutdown before they are FAILed;
    - ``beat_interval``: seconds between heartbeats (Faktory forgets a worker after 60);
    - ``labels``, ``wid`` (random when None), ``hostname``: how the server shows it;
    - ``url`` (or ``settings``): the server; by default the App's own;
    - ``burst``: stop once every listed queue is empty and nothing is running;
    - ``health_file``: a path touched after every successful heartbeat;
    - ``max_jobs``, ``max_memory_mb``: recycle (quiet, finish, stop) after that many jobs
      or above that RSS; ``on_recycle`` is called when that starts (the supervisor
      starts a replacement then);
    - ``events``: a :class:`~kaffi.worker.events.WorkerEvents` told what only the worker
      loop knows (empty FETCHes, state changes, the server's reachability), for metrics.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: str | Sequence[str] = ("default",),
        concurrency: int = 20,
        timeout: float = 8.0,
        beat_interval: float = 15.0,
        labels: Sequence[str] = (),
        wid: str | None = None,
        url: str | None = None,
        settings: ConnectionSettings | None = None,
        burst: bool = False,
        health_file: str | os.PathLike[str] | None = None,
        hostname: str | None = None,
        max_jobs: int | None = None,
        max_memory_mb: float | None = None,
        on_recycle: Callable[[str], None] | None = None,
        parent_pid: int | None = None,
        pool_size: int | None = None,
        events: WorkerEvents | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValidationError(
                f"concurrency must be a whole number of at least 1, got {concurrency!r}",
                field="concurrency",
            )
        if pool_size is None:
            pool_size = concurrency + 2
        if (
            isinstance(pool_size, bool)
            or not isinstance(pool_size, int)
            or pool_size < concurrency + 1
        ):
            raise ValidationError(
                f"pool_size must be a whole number of at least concurrency + 1 ({concurrency + 1}:"
                f" a connection per job slot and one for the heartbeat), got {pool_size!r}",
                field="pool_size",
            )
        if not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValidationError(
                f"timeout must be 0 or more seconds, got {timeout!r}", field="timeout"
            )
        if not isinstance(beat_interval, (int, float)) or not 0 < beat_interval <= 60:
            raise ValidationError(
                "beat_interval must be more than 0 and at most 60 seconds (Faktory forgets a"
                f" worker silent for 60 s), got {beat_interval!r}",
                field="beat_interval",
            )
        if max_jobs is not None and max_jobs < 1:
            raise ValidationError(
                f"max_jobs must be at least 1, got {max_jobs!r}", field="max_jobs"
            )
        if max_memory_mb is not None and max_memory_mb <= 0:
            raise ValidationError(
                f"max_memory_mb must be positive, got {max_memory_mb!r}", field="max_memory_mb"
            )
        self.app = app
        self.queues: QueueOrder = parse_queues(queues)
        self.concurrency = concurrency
        #: The most connections this worker holds at once (the seed's default,
        #: concurrency + 2). It uses concurrency + 1: one per slot, one for the heartbeat;
        #: a report resent after a connection broke opens its fresh one only after
        #: closing the broken one.
        self.pool_size = pool_size
        self.timeout = float(timeout)
        self.beat_interval = float(beat_interval)
        self.labels: tuple[str, ...] = tuple(labels)
        self.wid: str = wid or secrets.token_hex(8)
        self.hostname = hostname or socket.gethostname()
        self.burst = burst
        self.health_file = Path(health_file) if health_file is not None else None
        self.max_jobs = max_jobs
        self.max_memory_mb = max_memory_mb
        self._on_recycle = on_recycle
        self._parent_pid = parent_pid
        self._url = url
        self._settings = settings
        #: The observer of what happens outside jobs (no-op by default).
        self.events = events if events is not None else WorkerEvents()

        #: Jobs finished (ACKed or FAILed) and FAILed, since start.
        self.processed = 0
        self.failed = 0
        self.state = RUNNING
        self._running = 0
        self._exit_when_idle = False
        self._recycling = False
        self._hurry_requested = False
        self._started = False
        self._fatal: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: JobThreads | None = None
        self._slots: list[_Slot] = []
        self._live_slots = 0
        self._beat_conn: AsyncConnection | None = None
        self._beat_lock: asyncio.Lock | None = None
        self._stop_event: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._perform_job: Callable[..., Awaitable[Any]] | None = None
        self._stopped = threading.Event()
        #: Set once run() has started its slots and heartbeat (for hosts and tests that
        #: run the worker in another thread and want to talk to it).
        self.ready = threading.Event()
        self._sigint_count = 0
        self._stop_reason = ""
        self._fetch_timeout = MIN_FETCH_TIMEOUT
        self._outage_state: _Outage | None = None

    def __repr__(self) -> str:
        return (
            f"<Worker wid={self.wid} {self.state} running={self._running}/{self.concurrency}"
            f" processed={self.processed} queues={','.join(self.queues.names)}>"
        )

    # -- the seed API ---------------------------------------------------------------------

    def use(self, middleware: Middleware) -> Worker:
        """Add a worker middleware (to the App: every worker of it runs the chain)."""
        self.app.use(middleware)
        return self

    def register(self, name: str, fn: Callable[..., Any]) -> Worker:
        """Register ``fn`` for jobtype ``name`` (on the App)."""
        self.app.register(name, fn)
        return self

    def work(self) -> None:
        """Run until stopped (signals, ``stop()``, the server, burst mode). Installs the
        signal handlers when called in the main thread."""
        asyncio.run(
            self.run(install_signal_handlers=threading.current_thread() is threading.main_thread())
        )

    @property
    def running_jobs(self) -> int:
        return self._running

    @property
    def settings(self) -> ConnectionSettings:
        if self._settings is None:
            if self._url is not None:
                from kaffi.client.config import resolve_settings

                self._settings = resolve_settings(self._url)
            else:
                self._settings = self.app.settings
        return self._settings

    def quiet(self) -> None:
        """Stop fetching; finish what is held; keep beating. Safe from any thread."""
        self._call_on_loop(self._enter_quiet, "asked to quiet")

    def stop(self, timeout: float | None = None) -> None:
        """Shut down (see the module docstring) and return when the worker has stopped.

        From another thread it blocks (at most ``timeout`` seconds when given). On the
        worker's own loop it cannot block: it starts the shutdown and returns; await
        :meth:`stop_async` there instead.
        """
        loop = self._loop
        self._call_on_loop(self._request_stop, "stop() called")
        if loop is None or self._on_loop_thread():
            return
        self._stopped.wait(timeout)

    async def stop_async(self) -> None:
        """Shut down and wait until stopped, from any event loop."""
        self._call_on_loop(self._request_stop, "stop() called")
        if self._loop is None:
            return
        if self._on_loop_thread():
            assert self._done is not None
            await self._done.wait()
        else:
            await asyncio.get_running_loop().run_in_executor(None, self._stopped.wait)

    def beat(self) -> str:
        """Send one heartbeat now and return the server's word: ``"OK"``, ``"quiet"`` or
        ``"terminate"`` (acted upon too). For threads other than the worker's loop; use
        :meth:`beat_async` on it."""
        loop = self._loop
        if loop is None or not self._started:
            raise ConfigurationError("the worker is not running: beat() needs run() or work()")
        if self._on_loop_thread():
            raise ConfigurationError("beat() would block the worker's own loop: await beat_async()")
        return asyncio.run_coroutine_threadsafe(self.beat_async(), loop).result()

    async def beat_async(self) -> str:
        """The heartbeat, on the worker's loop."""
        if self._loop is None or not self._started:
            raise ConfigurationError("the worker is not running: beat needs run() or work()")
        if not self._on_loop_thread():
            fut = asyncio.run_coroutine_threadsafe(self._beat_once(), self._loop)
            return await asyncio.wrap_future(fut)
        return await self._beat_once()

    # -- running ------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run in the current event loop until stopped. Raises only for errors that make
        running pointless (a refused password, a bad configuration).

        Before any slot starts, the heartbeat connection says HELLO; attempts are
        repeated with a short backoff for up to the connect timeout (``connect_timeout``,
        5 s by default). A server still unreachable then raises
        :class:`~kaffi.errors.ConnectError` (``ConnectTimeout`` when it never answered);
        a refused password raises :class:`~kaffi.errors.AuthenticationError`. A server
        lost later is not fatal: every connection reconnects with capped backoff, and
        the outage is logged once (plus a reminder every 30 s while it lasts)."""
        if self._started:
            raise ConfigurationError("this Worker has already been started; build a new one")
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()
        self._done = asyncio.Event()
        self._beat_lock = asyncio.Lock()
        from kaffi.app.execution import perform

        self._perform_job = perform
        if self.state != RUNNING:  # quiet() or stop() came before run()
            self._wake.set()
            if self.state == TERMINATE:
                self._stop_event.set()
        install_record_factory()
        # Resolved now, so a bad URL fails before anything starts.
        self._fetch_timeout = max(self.settings.timeout, MIN_FETCH_TIMEOUT)
        # Sized to the concurrency: a job holds at most one thread, however many plain
        # middleware wrap it (the rest of a chain runs its blocking calls in the thread of
        # the plain middleware waiting in next(); see kaffi.app.middleware.run_chain).
        self._threads = JobThreads(loop, self.concurrency, name=f"kaffi-job-{self.wid}")
        handlers = SignalHandlers(
            loop, on_stop=self._on_stop_signal, on_quiet=self.quiet, on_dump=self._dump_stacks
        )
        if install_signal_handlers:
            handlers.install()
        log.info(
            "worker %s starting: queues %s, concurrency %d, server %s, pid %d",
            self.wid,
            self.queues.describe(),
            self.concurrency,
            self.settings.url,
            os.getpid(),
        )
        beat_task: asyncio.Task[None] | None = None
        monitor_task: asyncio.Task[None] | None = None
        try:
            # The first connection, before any slot: a server that cannot be reached
            # now is a start-up failure (raised), not an outage to ride out.
            if await self._first_connection():
                notify(self.events, "started", self)
                self._slots = [_Slot(i) for i in range(self.concurrency)]
                self._live_slots = len(self._slots)
                for slot in self._slots:
                    slot.task = loop.create_task(
                        self._slot_loop(slot), name=f"kaffi-slot-{slot.index}"
                    )
                beat_task = loop.create_task(self._heartbeat(), name="kaffi-heartbeat")
                self.ready.set()
                if self.max_memory_mb is not None or self._parent_pid is not None:
                    monitor_task = loop.create_task(self._monitor(), name="kaffi-monitor")
                await self._stop_event.wait()
        except asyncio.CancelledError:
            # The host cancelled run(): still give back every job held, without waiting.
            self._hurry_requested = True
            self._hurry.set()
            raise
        finally:
            started = bool(self._slots)
            if started:
                await self._shutdown()
            else:
                # Nothing ran and nothing is held: there is nothing to shut down.
                self.state = TERMINATE
            for task in (beat_task, monitor_task):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                *(t for t in (beat_task, monitor_task) if t is not None), return_exceptions=True
            )
            await _close(self._beat_conn)
            self._beat_conn = None
            handlers.remove()
            self._threads.shutdown()
            self.state = STOPPED
            notify(self.events, "state_changed", self, STOPPED)
            self._stopped.set()
            self._done.set()
            if started:
                log.info(
                    "worker %s stopped (%s): %d jobs processed, %d failed",
                    self.wid,
                    self._stop_reason or "done",
                    self.processed,
                    self.failed,
                )
        if self._fatal is not None:
            raise self._fatal

    @property
    def abandoned_threads(self) -> bool:
        """True after a shutdown that left job threads running (stragglers)."""
        return any(s.abandoned and s.thread_id is not None for s in self._slots)

    # -- state changes (on the loop) ------------------------------------------------------

    def _on_loop_thread(self) -> bool:
        loop = self._loop
        if loop is None:
            return False
        try:
            return asyncio.get_running_loop() is loop
        except RuntimeError:
            return False

    def _call_on_loop(self, fn: Callable[[str], None], reason: str) -> None:
        loop = self._loop
        if loop is None or self._on_loop_thread() or loop.is_closed():
            fn(reason)
        else:
            loop.call_soon_threadsafe(fn, reason)

    def _enter_quiet(self, reason: str) -> None:
        if self.state != RUNNING:
            return
        self.state = QUIET
        notify(self.events, "state_changed", self, QUIET)
        log.info(
            "worker %s quiet (%s): no more fetching, finishing %d jobs",
            self.wid,
            reason,
            self._running,
        )
        if self._wake is not None:
            self._wake.set()
        self._check_idle()

    def _request_stop(self, reason: str) -> None:
        if self.state in (TERMINATE, STOPPED):
            return
        self._stop_reason = reason
        self.state = TERMINATE
        notify(self.events, "state_changed", self, TERMINATE)
        log.info(
            "worker %s shutting down (%s): %d jobs running, waiting up to %gs",
            self.wid,
            reason,
            self._running,
            self.timeout,
        )
        if self._wake is not None:
            self._wake.set()
        if self._stop_event is not None:
            self._stop_event.set()

    def _on_stop_signal(self, signum: int) -> None:
        if signum == signal.SIGINT:
            self._sigint_count += 1
            if self._sigint_count >= 2:
                log.warning("second SIGINT: not waiting for running jobs")
                self._hurry_requested = True
                if self._hurry is not None:
                    self._hurry.set()
                return
        self._request_stop(f"{signal_name(signum)} received")

    def _dump_stacks(self, reason: str = "SIGTTIN") -> None:
        log.warning(
            "stacks of worker %s (%s):\n%s", self.wid, reason, format_all_stacks(self._loop)
        )

    def _check_idle(self) -> None:
        """When quiet with nothing held and asked to leave then (burst, recycling): stop."""
        if self.state == QUIET and self._exit_when_idle and self._live_slots == 0:
            self._request_stop(
                "burst finished" if self.burst and not self._recycling else "recycled"
            )

    def _recycle(self, reason: str) -> None:
        if self._recycling:
            return
        self._recycling = True
        self._exit_when_idle = True
        log.info("worker %s recycling: %s", self.wid, reason)
        if self._on_recycle is not None:
            try:
                self._on_recycle(reason)
            except Exception:
                log.exception("the recycle callback failed")
        self._enter_quiet(f"recycling: {reason}")

    # -- connections ----------------------------------------------------------------------

    def _outage(self) -> _Outage:
        if self._outage_state is None:
            self._outage_state = _Outage(self.wid, self.settings.url)
        return self._outage_state

    async def _connect(self) -> AsyncConnection:
        """A new connection, HELLO'd with this worker's wid and labels."""
        from kaffi.client.aio import AsyncConnection

        return await AsyncConnection.open(
            self.settings,
            wid=self.wid,
            labels=self.labels,
            hostname=self.hostname,
            pid=os.getpid(),
        )

    async def _open(self) -> AsyncConnection:
        """:meth:`_connect`, once running: the outcome feeds the outage log."""
        outage = self._outage()
        attempt_started = outage.now()
        try:
            conn = await self._connect()
        except (TransportError, RemoteProtocolError) as exc:
            outage.connect_failed(exc, attempt_started)
            notify(self.events, "server_reachable", self, False)
            raise
        outage.connected()
        notify(self.events, "server_reachable", self, True)
        return conn

    async def _first_connection(self) -> bool:
        """Start-up: open the heartbeat connection (its HELLO registers the wid), trying
        for up to the connect timeout. True once connected; False when a stop came first.

        Raises ConnectError (ConnectTimeout if the server never answered) naming the
        server, without its password, when every attempt failed; a refused password or
        another ``-ERR`` to HELLO is raised as it is, at once: retrying cannot fix it.
        """
        assert self._stop_event is not None
        loop = asyncio.get_running_loop()
        window = self.settings.connect_timeout
        deadline = loop.time() + window
        delay = BACKOFF_FIRST
        attempts = 0
        while True:
            if self.state in (TERMINATE, STOPPED):
                return False
            attempts += 1
            remaining = max(deadline - loop.time(), 0.001)
            opening = asyncio.ensure_future(asyncio.wait_for(self._connect(), remaining))
            stopping = asyncio.ensure_future(self._stop_event.wait())
            try:
                await asyncio.wait((opening, stopping), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not opening.done():
                    opening.cancel()
                await asyncio.gather(opening, stopping, return_exceptions=True)
            if opening.cancelled():
                return False  # the stop won the race
            try:
                self._beat_conn = opening.result()
            except asyncio.TimeoutError:
                error: KaffiError = ConnectTimeout(
                    f"no answer within the connect timeout of {window:g}s"
                )
            except (TransportError, RemoteProtocolError) as exc:
                error = exc
            else:
                return self.state not in (TERMINATE, STOPPED)
            if self.state in (TERMINATE, STOPPED):
                return False
            wait = min(delay, deadline - loop.time())
            if wait <= 0:
                raise _unreachable(self.settings.url, error, attempts, window)
            if attempts == 1:
                log.info(
                    "worker %s: cannot reach the Faktory server at %s yet (%s); trying for"
                    " up to %gs",
                    self.wid,
                    self.settings.url,
                    _reason(self.settings.url, error),
                    window,
                )
            try:
                await asyncio.wait_for(self._stop_event.wait(), wait)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, STARTUP_BACKOFF_CAP)

    def _fatal_error(self, exc: BaseException) -> None:
        if self._fatal is None:
            self._fatal = exc
            log.error("worker %s cannot run: %s", self.wid, exc)
        self._hurry_requested = True
        if self._hurry is not None:
            self._hurry.set()
        self._request_stop(f"fatal: {exc}")

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake as soon as the state changes (quiet/stop)."""
        assert self._wake is not None
        if self._wake.is_set():
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            return

    async def _connect_slot(self, slot: _Slot) -> AsyncConnection | None:
        delay = BACKOFF_FIRST
        while self.state == RUNNING:
            try:
                slot.conn = await self._open()
                return slot.conn
            except AuthenticationError as exc:
                self._fatal_error(exc)
                return None
            except (TransportError, RemoteProtocolError) as exc:
                # Logged once for the whole worker by the outage tracker (_open).
                log.debug(
                    "worker %s: slot %d reconnecting in %.2fs: %s", self.wid, slot.index, delay, exc
                )
                await self._pause(delay)
                delay = next_backoff(delay)
            except ServerError as exc:
                if slot.index == 0 or delay >= BACKOFF_CAP:
                    log.warning(
                        "worker %s: the server refused HELLO (retrying in %.2fs): %s",
                        self.wid,
                        delay,
                        exc,
                    )
                await self._pause(delay)
                delay = next_backoff(delay)
        return None

    # -- the slot loop (the hot path) -----------------------------------------------------

    async def _slot_loop(self, slot: _Slot) -> None:
        _current_slot.set(slot)
        # The ACK/FAIL of the last job, to go out in one write with the next FETCH.
        pending: bytes | None = None
        delay = BACKOFF_FIRST
        try:
            while self.state == RUNNING:
                conn = slot.conn
                if conn is None or conn.broken:
                    await _close(conn)
                    slot.conn = None
                    conn = await self._connect_slot(slot)
                    if conn is None:
                        break
                fetch = self.queues.fetch_line()
                try:
                    if pending is not None:
                        report_reply, fetch_reply = await conn.pipeline(
                            (pending, fetch), timeout=self._fetch_timeout
                        )
                        _check_report(report_reply, pending)
                        pending = None
                    else:
                        fetch_reply = await conn.request(fetch, timeout=self._fetch_timeout)
                except (TransportError, RemoteProtocolError) as exc:
                    await _close(conn)
                    slot.conn = None
                    if pending is not None:
                        # The report may or may not have arrived: ACK and FAIL are safe to
                        # repeat, so send it again rather than risk losing it.
                        await self._report(slot, pending)
                        pending = None
                    # Not a warning: if the server is gone, the reconnect that fails
                    # says so once for every slot (see _Outage).
                    log.debug(
                        "worker %s: slot %d lost its connection, reconnecting: %s",
                        self.wid,
                        slot.index,
                        exc,
                    )
                    await self._pause(delay)
                    delay = next_backoff(delay)
                    continue
                delay = BACKOFF_FIRST
                try:
                    job = self._decode_job(fetch_reply)
                except ServerError as exc:
                    # The connection is fine but the server refuses (a paused server,
                    # a proxy saying no): don't hammer it.
                    log.warning("worker %s: FETCH refused: %s", self.wid, exc)
                    await self._pause(1.0)
                    continue
                if job is None:
                    notify(self.events, "fetch_empty", self)
                    if self.burst and self.state == RUNNING:
                        await self._burst_check(slot)
                    continue
                if isinstance(job, bytes):  # a job we cannot read: its FAIL line
                    pending = job
                    continue
                if self.state == TERMINATE:
                    # Shutdown began while this FETCH was on the wire: give the job back now.
                    await self._report(slot, _shutdown_fail(job, "before the job started"))
                    break
                pending = await self._perform(slot, job)
            if pending is not None:
                await self._report(slot, pending)
        except Exception as exc:
            # A bug, not a network problem: a worker quietly losing slots would be worse
            # than one that stops and says why.
            log.exception("worker %s: slot %d crashed", self.wid, slot.index)
            self._fatal_error(exc)
        finally:
            self._live_slots -= 1
            self._check_idle()

    def _decode_job(self, reply: Reply) -> JobPayload | bytes | None:
        """The fetched job, None for nothing, or the FAIL line for a job we cannot read.
        A ``-ERR`` reply raises ServerError."""
        try:
            return decode_fetch(reply)
        except RemoteProtocolError as exc:
            jid = _jid_of(reply)
            if jid is None:
                log.error("worker %s: server sent an unreadable job: %s", self.wid, exc)
                return None
            log.error("worker %s: job %s is not a valid Faktory job: %s", self.wid, jid, exc)
            self.processed += 1
            self.failed += 1
            return encode_fail(jid, "InvalidJob", str(exc))

    async def _perform(self, slot: _Slot, job: JobPayload) -> bytes:
        """Run one job; return its ACK or FAIL line."""
        perform = self._perform_job
        assert perform is not None
        slot.job = job
        slot.thread_id = None
        self._running += 1
        token = job_context.set((job.jid, job.jobtype))
        started = slot.started = time.monotonic()
        error: BaseException | None = None
        try:
            try:
                await perform(self.app, job, run_sync=self._run_sync)
            except asyncio.CancelledError as exc:
                if slot.abandoned:
                    raise  # shutdown gave up on this job and FAILed it already
                error = exc  # the job itself raised CancelledError: an ordinary failure
            # SystemExit and KeyboardInterrupt too: a job never stops the worker.
            except BaseException as exc:
                error = exc
            finally:
                self._running -= 1
                slot.job = None
            duration = time.monotonic() - started
            self.processed += 1
            # Logged inside the job's context, so the line carries jid and jobtype.
            if error is None:
                line = _ack_line(job.jid)
                log_job_done(job.jid, job.jobtype, duration, "ack")
            else:
                self.failed += 1
                line = self._fail_line(job, error)
                log_job_done(job.jid, job.jobtype, duration, "fail", error)
        finally:
            job_context.reset(token)
        if self.max_jobs is not None and self.processed >= self.max_jobs and not self._recycling:
            self._recycle(f"{self.processed} jobs done (max {self.max_jobs})")
        return line

    def _fail_line(self, job: JobPayload, exc: BaseException) -> bytes:
        errtype = type(exc).__name__
        if isinstance(exc, (SystemExit, KeyboardInterrupt, asyncio.CancelledError)):
            message = (
                f"the job raised {errtype}({', '.join(map(repr, exc.args))});"
                " a job cannot stop the worker, so it is failed instead"
            )
        else:
            message = str(exc) or errtype
        backtrace = format_backtrace(traceback.extract_tb(exc.__traceback__), job.backtrace)
        return encode_fail(job.jid, errtype, message, backtrace)

    def _run_sync(self, fn: Callable[[], T]) -> Awaitable[T]:
        """perform()'s way to run a plain callable: a job thread, with this context.
        (A plain function handing back the threads' coroutine: no coroutine of its own
        to create and step through per job.)"""
        assert self._threads is not None
        return self._threads.run(functools.partial(_in_thread, fn))

    async def _report(self, slot: _Slot, line: bytes) -> None:
        """Send one ACK/FAIL on the slot's connection, retrying over fresh connections
        with capped backoff for up to REPORT_RETRY_SECONDS; then log loudly."""
        deadline = time.monotonic() + REPORT_RETRY_SECONDS
        delay = BACKOFF_FIRST
        while True:
            conn = slot.conn
            try:
                if conn is None or conn.broken:
                    await _close(conn)
                    slot.conn = None
                    conn = slot.conn = await self._open()
                _check_report(await conn.request(line), line)
                return
            except AuthenticationError as exc:
                self._fatal_error(exc)
                break
            except (TransportError, RemoteProtocolError, ServerError) as exc:
                await _close(slot.conn)
                slot.conn = None
                if time.monotonic() + delay > deadline:
                    log.error(
                        "worker %s: GAVE UP sending %s after %.0fs: %s; the job will run again"
                        " when its reservation expires",
                        self.wid,
                        line[:200].decode("utf-8", "replace").strip(),
                        REPORT_RETRY_SECONDS,
                        exc,
                    )
                    return
                await asyncio.sleep(delay)
                delay = next_backoff(delay)
        log.error(
            "worker %s: could not send %s", self.wid, line[:200].decode("utf-8", "replace").strip()
        )

    async def _burst_check(self, slot: _Slot) -> None:
        """Burst mode: once nothing runs and every listed queue is empty, quiet and leave.
        Every slot whose FETCH came back empty gets here at about the same time; the first
        to conclude decides for all (one INFO each at most, one log line in all)."""
        if self._exit_when_idle or self._running or slot.conn is None:
            return
        try:
            info = decode_info(await slot.conn.request(encode_info()))
        except (TransportError, RemoteProtocolError, ServerError) as exc:
            log.warning("worker %s: INFO failed in burst mode: %s", self.wid, exc)
            return
        sizes = info.faktory.queues
        # _exit_when_idle again: another slot may have concluded while this INFO was out.
        if (
            not self._exit_when_idle
            and self._running == 0
            and all(sizes.get(q, 0) == 0 for q in self.queues.names)
        ):
            log.info("worker %s: queues empty and nothing running: burst done", self.wid)
            self._exit_when_idle = True
            self._enter_quiet("burst: queues empty")

    # -- heartbeat --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._beat_once()
            except AuthenticationError as exc:
                self._fatal_error(exc)
                return
            except (TransportError, RemoteProtocolError, ServerError) as exc:
                if self._outage().down_since is None:
                    log.warning("worker %s: heartbeat failed (will retry): %s", self.wid, exc)
                else:
                    log.debug("worker %s: heartbeat failed during the outage: %s", self.wid, exc)
            await asyncio.sleep(self.beat_interval)

    async def _beat_once(self) -> str:
        assert self._beat_lock is not None
        async with self._beat_lock:
            current = (
                None if self.state == RUNNING else (QUIET if self.state == QUIET else TERMINATE)
            )
            line = encode_beat(self.wid, current, rss_kb())
            answer = ""
            for attempt in (1, 2):
                conn = self._beat_conn
                try:
                    if conn is None or conn.broken:
                        await _close(conn)
                        self._beat_conn = None
                        conn = self._beat_conn = await self._open()
                    answer = decode_beat(await conn.request(line))
                    break
                except ServerError as exc:
                    if "unknown worker" not in exc.message or attempt == 2:
                        raise
                    # The server forgot us (no BEAT for 60 s): a new HELLO registers the
                    # wid again; the slots' connections recover by themselves.
                    log.warning("worker %s: server forgot this worker; registering again", self.wid)
                    await _close(conn)
                    self._beat_conn = None
                except (TransportError, RemoteProtocolError):
                    await _close(conn)
                    self._beat_conn = None
                    if attempt == 2:
                        raise
        self._touch_health_file()
        if answer == QUIET:
            self._enter_quiet("the server asked")
        elif answer == TERMINATE:
            self._request_stop("the server asked to terminate")
        return answer

    def _touch_health_file(self) -> None:
        if self.health_file is None:
            return
        try:
            self.health_file.touch()
        except OSError as exc:
            log.warning(
                "worker %s: cannot touch health file %s: %s", self.wid, self.health_file, exc
            )

    async def _monitor(self) -> None:
        """Recycling by memory, and leaving when the supervisor that started us is gone."""
        while self.state in (RUNNING, QUIET):
            await asyncio.sleep(MONITOR_INTERVAL)
            if self._parent_pid is not None and os.getppid() != self._parent_pid:
                self._request_stop("the supervisor is gone")
                return
            if self.max_memory_mb is not None and not self._recycling:
                used = rss_kb() / 1024
                if used > self.max_memory_mb:
                    self._recycle(f"RSS {used:.0f} MB above the limit of {self.max_memory_mb:g} MB")

    # -- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Steps 1-5 of the shutdown order in the module docstring."""
        assert self._hurry is not None
        # 1. Stop fetching (no-op when already terminating).
        self._request_stop(self._stop_reason or "shutdown")
        tasks = [s.task for s in self._slots if s.task is not None]
        # 2 and 3. Let FETCHes on the wire return (slots FAIL what they bring) and running
        # jobs finish, for up to `timeout` seconds or until a second SIGINT.
        deadline = time.monotonic() + self.timeout
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while not self._hurry_requested:
                pending = [t for t in tasks if not t.done()]
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0 or not any(s.job for s in self._slots):
                    break
                await asyncio.wait(
                    [*pending, hurry], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            # 4. Stragglers: FAIL them with the stack they are stuck in, then let them go.
            stragglers = [
                s
                for s in self._slots
                if s.job is not None and s.task is not None and not s.task.done()
            ]
            if stragglers:
                await asyncio.gather(*(self._abandon(s) for s in stragglers))
            # FETCHes still on the wire (no job yet): the server answers them within ~2 s.
            fetch_deadline = time.monotonic() + FETCH_GRACE_SECONDS
            while True:
                pending = [t for t in tasks if not t.done()]
                remaining = fetch_deadline - time.monotonic()
                if not pending:
                    break
                if remaining <= 0:
                    log.error(
                        "worker %s: %d connections still busy %gs into shutdown; closing them",
                        self.wid,
                        len(pending),
                        FETCH_GRACE_SECONDS,
                    )
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    break
                await asyncio.wait(pending, timeout=remaining)
        finally:
            hurry.cancel()
        # 5. Connections: END on every one (the heartbeat is stopped by run()).
        await asyncio.gather(*(_close(s.conn) for s in self._slots))
        for s in self._slots:
            s.conn = None

    async def _abandon(self, slot: _Slot) -> None:
        job = slot.job
        task = slot.task
        if job is None or task is None:
            return
        # Read the stack before cancelling: cancellation unwinds an async job's frames.
        stack = self._stack_of(slot)
        slot.abandoned = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ran = time.monotonic() - slot.started
        backtrace = format_backtrace(stack, job.backtrace)
        line = encode_fail(
            job.jid,
            SHUTDOWN_ERRTYPE,
            f"job still running after {ran:.1f}s when worker {self.wid} shut down"
            f" (timeout {self.timeout:g}s); Faktory will retry it",
            backtrace,
        )
        self.processed += 1
        self.failed += 1
        log.warning(
            "worker %s: job %s (%s) still running at shutdown: FAILed for a retry",
            self.wid,
            job.jid,
            job.jobtype,
        )
        await self._report(slot, line)

    def _stack_of(self, slot: _Slot) -> traceback.StackSummary:
        """Where the slot's job is now: its thread's stack, else its coroutine chain."""
        if slot.thread_id is not None:
            frame = sys._current_frames().get(slot.thread_id)
            if frame is not None:
                return traceback.extract_stack(frame)
        if slot.task is not None:
            frames = _coroutine_frames(slot.task.get_coro())
            return traceback.StackSummary.extract((f, f.f_lineno) for f in frames)
        return traceback.StackSummary()


def _reason(url: str, error: KaffiError) -> str:
    """``error``'s text for a message that already names the server at ``url``."""
    return str(error).removeprefix(f"could not connect to {url}: ")


def _unreachable(url: str, error: KaffiError, attempts: int, window: float) -> ConnectError:
    """The start-up error: names the server (never its password) and the last failure."""
    tried = f"{attempts} attempt{'s' if attempts != 1 else ''} in {window:g}s"
    message = f"cannot reach the Faktory server at {url}: {_reason(url, error)} ({tried})"
    if isinstance(error, ConnectTimeout):
        return ConnectTimeout(message)
    return ConnectError(message)


def _in_thread(fn: Callable[[], T]) -> T:
    slot = _current_slot.get()
    if slot is not None:
        slot.thread_id = threading.get_ident()
    return fn()


def _check_report(reply: Reply, line: bytes) -> None:
    """An ACK/FAIL answered ``-ERR`` stays answered: log it, never retry it."""
    if isinstance(reply, ErrorReply):
        log.warning(
            "server refused %s: -%s %s",
            line[:120].decode("utf-8", "replace").strip(),
            reply.code,
            reply.message,
        )


#: jids that need no JSON escaping (what Faktory clients generate: hex, base64url, uuids).
_PLAIN_JID = re.compile(r"[A-Za-z0-9_.:-]+")


def _ack_line(jid: str) -> bytes:
    """``ACK {"jid":J}``, from a byte template when the jid needs no escaping (a twentieth
    of ``encode_ack``'s cost, and the same bytes); ``encode_ack`` otherwise."""
    # isalnum() alone admits non-ASCII letters and digits; isascii() rules them out.
    if (jid.isalnum() and jid.isascii()) or _PLAIN_JID.fullmatch(jid):
        return b'ACK {"jid":"' + jid.encode("ascii") + b'"}\r\n'
    return encode_ack(jid)


def _shutdown_fail(job: JobPayload, when: str) -> bytes:
    return encode_fail(
        job.jid,
        SHUTDOWN_ERRTYPE,
        f"worker shut down {when}; Faktory will retry it",
    )


def _jid_of(reply: Reply) -> str | None:
    import json

    if not isinstance(reply, BulkReply) or reply.data is None:
        return None
    try:
        doc = json.loads(reply.data)
    except ValueError:
        return None
    jid = doc.get("jid") if isinstance(doc, dict) else None
    return jid if isinstance(jid, str) and jid else None
