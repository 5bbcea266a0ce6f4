"""The worker's lifecycle (running -> quiet -> terminate -> stopped) and its heartbeat.

States are Faktory's and only ever move forward:

- *running*: slots fetch and run jobs;
- *quiet* (SIGTSTP, ``worker.quiet()``, a BEAT reply ``quiet``, burst mode once the
  queues are empty, recycling): no slot starts a new FETCH; a FETCH already sent may
  still bring a job, which is run; every held job finishes and is reported;
- *terminate*: the shutdown (:mod:`kaffi.worker.shutdown`);
- *stopped*: ``run()`` has returned.

:class:`Lifecycle` holds the state, the counters and the events the other parts wait on,
and makes every transition (always on the worker's loop). :class:`Heartbeat` sends BEAT
every ``beat_interval`` on a connection of its own (so a FETCH blocked on the server
never delays it), acts on the server's ``quiet``/``terminate``, touches the health file,
and watches the memory limit and the supervisor.

This module must not import the slot loop (:mod:`kaffi.worker.processor`) or the shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kaffi._procinfo import rss_kb
from kaffi.errors import (
    AuthenticationError,
    ConfigurationError,
    RemoteProtocolError,
    ServerError,
    TransportError,
)
from kaffi.protocol.commands import decode_beat, encode_beat
from kaffi.worker.joblog import count_jobs

if TYPE_CHECKING:
    from kaffi.client.aio import AsyncConnection
    from kaffi.worker.connections import Connector

__all__ = [
    "MONITOR_INTERVAL",
    "QUIET",
    "RUNNING",
    "STOPPED",
    "TERMINATE",
    "Heartbeat",
    "Lifecycle",
    "check_memory_limit",
]

log = logging.getLogger("kaffi.worker")

RUNNING, QUIET, TERMINATE, STOPPED = "running", "quiet", "terminate", "stopped"
#: What the shutdown line adds when the worker's signal handlers are installed.
SKIP_WAIT_HINT = " (a second Ctrl-C or SIGTERM skips the wait)"
#: How often the memory limit and the parent process are checked, when asked for.
MONITOR_INTERVAL = 1.0


@dataclass(eq=False, slots=True)
class Lifecycle:
    """The state of one worker and every change to it. Not thread-safe: the worker calls
    it on its loop (``Worker.quiet()``/``stop()`` from other threads hop onto the loop)."""

    # Slots (dataclass(slots=True)): the counters are touched several times per job.
    wid: str
    _: KW_ONLY
    timeout: float
    burst: bool
    on_recycle: Callable[[str], None] | None = None
    #: Told each state entered by a transition here (quiet, terminate); the worker
    #: passes it to its WorkerEvents.
    on_state: Callable[[str], None] | None = None
    state: str = field(default=RUNNING, init=False)
    #: Jobs finished (ACKed or FAILed) and FAILed, since start.
    processed: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)
    #: Jobs running now, and slots whose loop has not ended.
    running: int = field(default=0, init=False)
    live_slots: int = field(default=0, init=False)
    #: Leave once quiet and idle (burst mode done, recycling).
    exit_when_idle: bool = field(default=False, init=False)
    recycling: bool = field(default=False, init=False)
    #: Set by a second SIGTERM or SIGINT, a fatal error or a cancelled run(): skip the job wait.
    hurry_requested: bool = field(default=False, init=False)
    fatal: BaseException | None = field(default=None, init=False)
    stop_reason: str = field(default="", init=False)
    #: SIGTERMs and SIGINTs received: the second of either kind skips the job wait.
    stop_signals: int = field(default=0, init=False)
    #: True while the worker's signal handlers are installed (the shutdown line then
    #: says what a second signal does).
    signals_installed: bool = field(default=False, init=False)
    #: Created on the running loop by :meth:`bind`.
    stop_event: asyncio.Event | None = field(default=None, init=False)
    wake: asyncio.Event | None = field(default=None, init=False)
    hurry: asyncio.Event | None = field(default=None, init=False)
    done: asyncio.Event | None = field(default=None, init=False)

    def bind(self) -> None:
        """Create the events on the running loop; honour a quiet() or stop() that came
        before run()."""
        self.stop_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.hurry = asyncio.Event()
        self.done = asyncio.Event()
        if self.state != RUNNING:
            self.wake.set()
            if self.state == TERMINATE:
                self.stop_event.set()

    @property
    def stopping(self) -> bool:
        """True once the shutdown began."""
        return self.state in (TERMINATE, STOPPED)

    def enter_quiet(self, reason: str) -> None:
        """running -> quiet (nothing else)."""
        if self.state != RUNNING:
            return
        self._enter(QUIET)
        log.info(
            "worker %s quiet (%s): no more fetching, finishing %s",
            self.wid,
            reason,
            count_jobs(self.running),
        )
        self.check_idle()

    def request_stop(self, reason: str) -> None:
        """running/quiet -> terminate: the shutdown begins."""
        if self.state in (TERMINATE, STOPPED):
            return
        self.stop_reason = reason
        self._enter(TERMINATE)
        if self.stop_event is not None:
            self.stop_event.set()
        log.info(
            "worker %s shutting down (%s): %s running, waiting up to %gs%s",
            self.wid,
            reason,
            count_jobs(self.running),
            self.timeout,
            SKIP_WAIT_HINT if self.signals_installed else "",
        )

    def _enter(self, state: str) -> None:
        """Take ``state`` (quiet or terminate), tell the callback, and wake whatever waits
        on a change (slots between FETCHes, :meth:`pause`). Setting events switches to
        nothing, so the caller's log line still comes before anyone acts on it."""
        self.state = state
        if self.on_state is not None:
            self.on_state(state)
        if self.wake is not None:
            self.wake.set()

    def hurry_up(self) -> None:
        """Stop waiting for running jobs (a second SIGTERM or SIGINT, a fatal error, a
        cancelled run)."""
        self.hurry_requested = True
        if self.hurry is not None:
            self.hurry.set()

    def fatal_error(self, exc: BaseException) -> None:
        """An error that makes running pointless: remembered for run() to raise."""
        if self.fatal is None:
            self.fatal = exc
            log.error("worker %s cannot run: %s", self.wid, exc)
        self.hurry_up()
        self.request_stop(f"fatal: {exc}")

    def check_idle(self) -> None:
        """When quiet with nothing held and asked to leave then (burst, recycling): stop."""
        if self.state == QUIET and self.exit_when_idle and self.live_slots == 0:
            self.request_stop("burst finished" if self.burst and not self.recycling else "recycled")

    def recycle(self, reason: str) -> None:
        """Quiet, finish, stop (``max_jobs``, ``max_memory_mb``); tell the callback."""
        if self.recycling:
            return
        self.recycling = True
        self.exit_when_idle = True
        log.info("worker %s recycling: %s", self.wid, reason)
        if self.on_recycle is not None:
            try:
                self.on_recycle(reason)
            except Exception:
                log.exception("the recycle callback failed")
        self.enter_quiet(f"recycling: {reason}")

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake as soon as the state changes (quiet/stop)."""
        wake = self.wake
        assert wake is not None
        if wake.is_set() or seconds <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), seconds)
        except asyncio.TimeoutError:
            return


def check_memory_limit(limit_mb: float, option: str = "max_memory_mb") -> None:
    """Refuse a memory limit below what this process already uses, idle: a worker would
    be recycled as soon as it starts, and its replacement too, forever. Called before
    a worker (or a supervisor's first child) starts; ``option`` is the name to show."""
    idle_mb = rss_kb() / 1024
    if limit_mb < idle_mb:
        raise ConfigurationError(
            f"{option} is {limit_mb:g} MB, below a worker's idle size ({idle_mb:.0f} MB"
            " measured at start-up): every worker would be recycled as soon as it starts;"
            f" give more than {idle_mb:.0f} MB"
        )


@dataclass(eq=False)
class Heartbeat:
    """BEAT every ``interval`` seconds on a connection of its own; the health file; the
    memory and supervisor watch."""

    life: Lifecycle
    connector: Connector
    _: KW_ONLY
    interval: float
    health_file: Path | None
    max_memory_mb: float | None
    parent_pid: int | None
    #: The heartbeat's connection (opened first of all, at start-up).
    conn: AsyncConnection | None = field(default=None, init=False)
    _lock: asyncio.Lock | None = field(default=None, init=False)

    async def run(self) -> None:
        """Beat until cancelled; a refused password is fatal, other failures are retried
        at the next beat."""
        life = self.life
        while True:
            try:
                await self.beat_once()
            except AuthenticationError as exc:
                life.fatal_error(exc)
                return
            except (TransportError, RemoteProtocolError, ServerError) as exc:
                if self.connector.outage.down_since is None:
                    log.warning("worker %s: heartbeat failed (will retry): %s", life.wid, exc)
                else:
                    log.debug("worker %s: heartbeat failed during the outage: %s", life.wid, exc)
            await asyncio.sleep(self.interval)

    async def beat_once(self) -> str:
        """One BEAT (reconnecting once if needed); act on the answer and return it."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        life = self.life
        async with self._lock:
            current = (
                None if life.state == RUNNING else (QUIET if life.state == QUIET else TERMINATE)
            )
            line = encode_beat(life.wid, current, rss_kb())
            answer = ""
            for attempt in (1, 2):
                conn = self.conn
                try:
                    if conn is None or conn.broken:
                        await self.connector.close(conn)
                        self.conn = None
                        conn = self.conn = await self.connector.open()
                    answer = decode_beat(await conn.request(line))
                    break
                except ServerError as exc:
                    if "unknown worker" not in exc.message or attempt == 2:
                        raise
                    # The server forgot us (no BEAT for 60 s): a new HELLO registers the
                    # wid again; the slots' connections recover by themselves.
                    log.warning("worker %s: server forgot this worker; registering again", life.wid)
                    await self.connector.close(conn)
                    self.conn = None
                except (TransportError, RemoteProtocolError):
                    await self.connector.close(conn)
                    self.conn = None
                    if attempt == 2:
                        raise
        self._touch_health_file()
        if answer == QUIET:
            life.enter_quiet("the server asked")
        elif answer == TERMINATE:
            life.request_stop("the server asked to terminate")
        return answer

    async def close(self) -> None:
        """END the heartbeat's connection."""
        await self.connector.close(self.conn)
        self.conn = None

    def _touch_health_file(self) -> None:
        if self.health_file is None:
            return
        try:
            self.health_file.touch()
        except OSError as exc:
            log.warning(
                "worker %s: cannot touch health file %s: %s", self.life.wid, self.health_file, exc
            )

    @property
    def watching(self) -> bool:
        """Whether :meth:`monitor` has anything to watch."""
        return self.max_memory_mb is not None or self.parent_pid is not None

    async def monitor(self) -> None:
        """Recycling by memory, and leaving when the supervisor that started us is gone."""
        life = self.life
        while life.state in (RUNNING, QUIET):
            await asyncio.sleep(MONITOR_INTERVAL)
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                life.request_stop("the supervisor is gone")
                return
            if self.max_memory_mb is not None and not life.recycling:
                used = rss_kb() / 1024
                if used > self.max_memory_mb:
                    life.recycle(f"RSS {used:.0f} MB above the limit of {self.max_memory_mb:g} MB")
