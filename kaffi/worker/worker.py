"""``Worker``: runs an App's tasks; owns the options, the public API and ``run()``.

How a worker process is built
-----------------------------
One asyncio event loop owns the network. The worker is a manager over parts that each
own one concern (faktory_worker_go's manager and processor, split further):

- :mod:`kaffi.worker.options`: the options, checked once by a pydantic model;
- :mod:`kaffi.worker.connections`: every connection the worker holds, opened within
  ``pool_size``; start-up's first connection; the outage log;
- :mod:`kaffi.worker.processor`: ``concurrency`` slots that FETCH only when free, run
  the job and pipeline its ACK/FAIL with the next FETCH (the hot path);
- :mod:`kaffi.worker.lifecycle`: the states (running -> quiet -> terminate -> stopped)
  and the heartbeat on a connection of its own;
- :mod:`kaffi.worker.shutdown`: the shutdown order (written at its top);
- :mod:`kaffi.worker.backoff`: the full-jitter waits every retry uses;
- :mod:`kaffi.worker.events`: what only the worker loop knows (empty FETCHes, state
  changes, the server's reachability), told to an observer (metrics).

Reaching the server
-------------------
- At start-up, before any slot exists, the heartbeat connection says HELLO. Attempts are
  repeated with a short backoff for up to the connect timeout (5 s by default); a server
  still unreachable then is a start-up failure: ``run()`` raises ``ConnectError`` naming
  the server (never the password). A refused password is raised at once.
- Once running, a lost server is an outage to ride out: every slot, the heartbeat and
  the report retries reconnect by themselves with full-jitter backoff, and the outage is
  logged once for the whole worker (:class:`~kaffi.worker.connections.Outage`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaffi._bases import forwarded
from kaffi.errors import ConfigurationError
from kaffi.protocol.commands import format_backtrace  # re-exported: its old import path
from kaffi.worker.connections import OUTAGE_REMINDER_SECONDS, Connector
from kaffi.worker.events import WorkerEvents, notify, observes_jobs
from kaffi.worker.joblog import count_jobs, install_record_factory
from kaffi.worker.lifecycle import STOPPED, TERMINATE, Heartbeat, Lifecycle, check_memory_limit
from kaffi.worker.options import check_options
from kaffi.worker.processor import MIN_FETCH_TIMEOUT, REPORT_RETRY_SECONDS, Processor
from kaffi.worker.queues import QueueOrder, parse_queues
from kaffi.worker.shutdown import shutdown
from kaffi.worker.signals import SignalHandlers, format_all_stacks, signal_name
from kaffi.worker.threads import JobThreads

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.app.middleware import Middleware
    from kaffi.app.task import Task
    from kaffi.client.config import ConnectionSettings

__all__ = [
    "Worker",
    "REPORT_RETRY_SECONDS",
    "OUTAGE_REMINDER_SECONDS",
    "format_backtrace",
]

log = logging.getLogger("kaffi.worker")


class Worker:
    """Runs an :class:`~kaffi.App`'s tasks. Build it with ``app.worker(**options)``.

    Options:

    - ``queues``: names in strict order, or ``"critical:3,default:1"`` for a weighted
      random order per fetch (a string or a list of such items);
    - ``concurrency``: jobs held at once (slots, and threads for plain functions);
    - ``pool_size``: the most connections the worker holds at once (default
      concurrency + 2, as in the Node worker; at least concurrency + 1: one per slot and
      one for the heartbeat). Opening one more waits until another is closed;
    - ``timeout``: seconds running jobs get to finish at shutdown before they are FAILed;
    - ``beat_interval``: seconds between heartbeats (Faktory forgets a worker after 60);
    - ``labels``, ``wid`` (random when None), ``hostname``: how the server shows it;
    - ``url`` (or ``settings``): the server; by default the App's own;
    - ``burst``: stop once every listed queue is empty and nothing is running;
    - ``health_file``: a path touched after every successful heartbeat;
    - ``middleware``: a list of worker middleware of this worker's own, run inside the
      App's (``app.use``) around every job, as the Node worker's ``middleware`` option;
    - ``registry``: a mapping of jobtype to function, this worker's own jobtypes, looked
      up before the App's tasks (so it can replace one), as the Node worker's
      ``registry`` option; the functions' arguments are converted as a task's are;
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
        middleware: Sequence[Middleware] = (),
        registry: Mapping[str, Callable[..., Any]] | None = None,
        events: WorkerEvents | None = None,
    ) -> None:
        options = check_options(
            middleware=middleware,
            registry=registry if registry is not None else {},
            concurrency=concurrency,
            pool_size=pool_size,
            timeout=timeout,
            beat_interval=beat_interval,
            max_jobs=max_jobs,
            max_memory_mb=max_memory_mb,
            labels=labels,
            wid=wid,
            hostname=hostname,
        )
        assert options.pool_size is not None  # the model fills it in
        self.app = app
        self.queues: QueueOrder = parse_queues(queues)
        self.concurrency = options.concurrency
        #: The most connections this worker holds at once (see the class docstring).
        self.pool_size: int = options.pool_size
        self.timeout = float(options.timeout)
        self.beat_interval = float(options.beat_interval)
        self.labels: tuple[str, ...] = options.labels
        self.wid: str = options.wid or secrets.token_hex(8)
        self.hostname = options.hostname or socket.gethostname()
        self.burst = burst
        self.health_file = Path(health_file) if health_file is not None else None
        self.max_jobs = options.max_jobs
        self.max_memory_mb = options.max_memory_mb
        #: This worker's middleware, run inside the App's own around every job.
        self.middleware: list[Middleware] = list(options.middleware)
        #: This worker's jobtypes (``registry=``), looked up before the App's tasks.
        self.registry: dict[str, Task[Any, Any]] = {
            jobtype: app.unregistered_task(jobtype, fn) for jobtype, fn in options.registry.items()
        }
        self._url = url
        self._settings = settings
        #: The observer of what happens outside jobs (no-op by default).
        self.events = events if events is not None else WorkerEvents()

        # The parts tell the observer through these callbacks, which add the worker.
        self.life = Lifecycle(
            self.wid,
            timeout=self.timeout,
            burst=burst,
            on_recycle=on_recycle,
            on_state=partial(notify, self.events, "state_changed", self),
        )
        self.connector = Connector(
            wid=self.wid,
            labels=self.labels,
            hostname=self.hostname,
            settings=lambda: self.settings,
            pool_size=self.pool_size,
            on_reachable=partial(notify, self.events, "server_reachable", self),
        )
        self.processor = Processor(
            app,
            self.life,
            self.connector,
            self.queues,
            concurrency=self.concurrency,
            max_jobs=self.max_jobs,
            registry=self.registry,
            middleware=self.middleware,
            on_fetch_empty=partial(notify, self.events, "fetch_empty", self),
            # Per job: bound straight to the observer (Processor logs what it raises),
            # and only when it overrides them.
            on_job_started=(
                partial(self.events.job_started, self) if observes_jobs(self.events) else None
            ),
            on_job_finished=(
                partial(self.events.job_finished, self) if observes_jobs(self.events) else None
            ),
        )
        self.heartbeat = Heartbeat(
            self.life,
            self.connector,
            interval=self.beat_interval,
            health_file=self.health_file,
            max_memory_mb=self.max_memory_mb,
            parent_pid=parent_pid,
        )
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = threading.Event()
        #: Set once run() has started its slots and heartbeat (for hosts and tests that
        #: run the worker in another thread and want to talk to it).
        self.ready = threading.Event()

    def __repr__(self) -> str:
        return (
            f"<Worker wid={self.wid} {self.state} running={self.running_jobs}/{self.concurrency}"
            f" processed={self.processed} queues={','.join(self.queues.names)}>"
        )

    # -- the seed API ---------------------------------------------------------------------

    def use(self, middleware: Middleware) -> Worker:
        """Add a worker middleware (to the App: every worker of it runs the chain; the
        ``middleware=`` option is this worker's alone)."""
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

    state = forwarded[str]("life.state", "``running``, ``quiet``, ``terminate`` or ``stopped``.")
    processed = forwarded[int]("life.processed", "Jobs finished (ACKed or FAILed) since start.")
    failed = forwarded[int]("life.failed", "Jobs FAILed since start.")
    running_jobs = forwarded[int]("life.running", "Jobs running now.")

    @property
    def settings(self) -> ConnectionSettings:
        """Where the server is: ``url``/``settings`` when given, else the App's."""
        if self._settings is None:
            if self._url is not None:
                from kaffi.client.config import resolve_settings

                self._settings = resolve_settings(self._url)
            else:
                self._settings = self.app.settings
        return self._settings

    def quiet(self) -> None:
        """Stop fetching; finish what is held; keep beating. Safe from any thread."""
        self._call_on_loop(self.life.enter_quiet, "asked to quiet")

    def stop(self, timeout: float | None = None) -> None:
        """Shut down (see :mod:`kaffi.worker.shutdown`) and return when the worker has
        stopped.

        From another thread it blocks (at most ``timeout`` seconds when given). On the
        worker's own loop it cannot block: it starts the shutdown and returns; await
        :meth:`stop_async` there instead.
        """
        loop = self._loop
        self._call_on_loop(self.life.request_stop, "stop() called")
        if loop is None or self._on_loop_thread():
            return
        self._stopped.wait(timeout)

    async def stop_async(self) -> None:
        """Shut down and wait until stopped, from any event loop."""
        self._call_on_loop(self.life.request_stop, "stop() called")
        if self._loop is None:
            return
        if self._on_loop_thread():
            assert self.life.done is not None
            await self.life.done.wait()
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
            fut = asyncio.run_coroutine_threadsafe(self.heartbeat.beat_once(), self._loop)
            return await asyncio.wrap_future(fut)
        return await self.heartbeat.beat_once()

    @property
    def abandoned_threads(self) -> bool:
        """True after a shutdown that left job threads running (stragglers)."""
        return any(s.abandoned and s.thread_id is not None for s in self.processor.slots)

    # -- running ------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run in the current event loop until stopped. Raises only for errors that make
        running pointless (a refused password, a bad configuration).

        Before any slot starts, the heartbeat connection says HELLO; attempts are
        repeated with a short backoff for up to the connect timeout (``connect_timeout``,
        5 s by default). A server still unreachable then raises
        :class:`~kaffi.errors.ConnectError` (``ConnectTimeout`` when it never answered);
        a refused password raises :class:`~kaffi.errors.AuthenticationError`. A server
        lost later is not fatal: every connection reconnects with full-jitter backoff,
        and the outage is logged once (plus a reminder every 30 s while it lasts)."""
        if self._started:
            raise ConfigurationError("this Worker has already been started; build a new one")
        if self.max_memory_mb is not None:
            # Measured now, with the app loaded and before any job: the idle size.
            check_memory_limit(self.max_memory_mb)
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        life = self.life
        life.bind()
        assert life.stop_event is not None
        assert life.done is not None
        install_record_factory()
        # Resolved now, so a bad URL fails before anything starts.
        self.processor.fetch_timeout = max(self.settings.timeout, MIN_FETCH_TIMEOUT)
        # Sized to the concurrency: a job holds at most one thread, however many plain
        # middleware wrap it (the rest of a chain runs its blocking calls in the thread of
        # the plain middleware waiting in next(); see kaffi.app.middleware.run_chain).
        threads = JobThreads(loop, self.concurrency, name=f"kaffi-job-{self.wid}")
        handlers = SignalHandlers(
            loop, on_stop=self._on_stop_signal, on_quiet=self.quiet, on_dump=self._dump_stacks
        )
        if install_signal_handlers:
            life.signals_installed = handlers.install()
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
            first = await self.connector.first_connection(life.stop_event, lambda: life.stopping)
            if first is not None:
                self.heartbeat.conn = first
                notify(self.events, "started", self)
                self.processor.start(loop, threads)
                beat_task = loop.create_task(self.heartbeat.run(), name="kaffi-heartbeat")
                self.ready.set()
                if self.heartbeat.watching:
                    monitor_task = loop.create_task(self.heartbeat.monitor(), name="kaffi-monitor")
                await life.stop_event.wait()
        except asyncio.CancelledError:
            # The host cancelled run(): still give back every job held, without waiting.
            life.hurry_up()
            raise
        finally:
            started = bool(self.processor.slots)
            if started:
                await shutdown(self.processor)
            else:
                # Nothing ran and nothing is held: there is nothing to shut down.
                life.state = TERMINATE
            for task in (beat_task, monitor_task):
                if task is not None:
                    task.cancel()
            await asyncio.gather(
                *(t for t in (beat_task, monitor_task) if t is not None), return_exceptions=True
            )
            await self.heartbeat.close()
            handlers.remove()
            threads.shutdown()
            life.state = STOPPED
            notify(self.events, "state_changed", self, STOPPED)
            self._stopped.set()
            life.done.set()
            if started:
                log.info(
                    "worker %s stopped (%s): %s processed, %d failed",
                    self.wid,
                    life.stop_reason or "done",
                    count_jobs(life.processed),
                    life.failed,
                )
        if life.fatal is not None:
            raise life.fatal

    # -- calls from other threads and signals -----------------------------------------------

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

    def _on_stop_signal(self, signum: int) -> None:
        life = self.life
        life.stop_signals += 1
        if life.stop_signals >= 2:
            # SIGTERM then SIGINT counts too: whoever sends a second signal wants out now.
            log.warning("second %s: not waiting for running jobs", signal_name(signum))
            life.hurry_up()
            return
        life.request_stop(f"{signal_name(signum)} received")

    def _dump_stacks(self, reason: str = "SIGTTIN") -> None:
        log.warning(
            "stacks of worker %s (%s):\n%s", self.wid, reason, format_all_stacks(self._loop)
        )
