"""``kaffi worker --processes N``: a supervisor process and N worker processes.

The supervisor runs no jobs and opens no connection. It

- starts N children with the ``spawn`` start method: each imports the app again by its
  ``module:attribute`` path and runs a :class:`~kaffi.worker.Worker` with its own wid
  (``<prefix>-<n>``: one random prefix shared by the children of a supervisor, so the
  Faktory UI shows them together) and heartbeat. ``spawn`` rather than ``fork``: a fresh
  interpreter inherits no sockets, pools, threads or locks from the parent;
- forwards SIGTERM, SIGINT, SIGTSTP and SIGTTIN to every child. Children run in their own
  process group so a Ctrl-C in a terminal reaches them once, through the supervisor
  (a second Ctrl-C or SIGTERM is forwarded as the second signal that skips the wait);
- restarts a child that dies (killed, crashed, exited non-zero) after a full-jitter
  backoff (:class:`~kaffi.worker.backoff.Backoff`: random, up to a doubling ceiling) and
  a log line, so children that crash together do not come back together; a child that
  exits 0 on its own (the server told it to terminate, or burst mode finished) is not
  replaced;
- gives up on a child that cannot start (exit status :data:`EXIT_CONFIG`: the app cannot
  be loaded, the password is refused, or the server cannot be reached within the connect
  timeout): restarting it would fail the same way, so the supervisor stops the other
  children gracefully and :meth:`Supervisor.run` raises the child's error (one
  ``kaffi: error:`` line and exit status 1 on the command line). The one exception: once
  any child has reached the server, a replacement that finds it unreachable is living
  through an outage, so it is restarted with the same backoff as a crashed one;
- recycles: a child that reaches ``max_jobs`` or passes ``max_memory_mb`` tells the
  supervisor through its pipe and goes quiet, finishing what it holds; the supervisor
  starts its replacement at once, so capacity stays and nothing is lost;
- never starts more than :data:`STARTS_PER_MINUTE` children in one place (slot) within
  a minute, restarts and recycling alike: a replacement past that waits until the
  oldest of those starts is a minute old, and one log line says why (the reason the
  last one was replaced) and for how long. A memory limit below a worker's idle size
  would otherwise replace a child every second, forever (``kaffi worker`` also refuses
  such a limit at start-up);
- exits when every child has exited (0, unless a child could not start), killing
  children that outlive a shutdown by far;
- pins each child to one CPU (``cpu_affinity``, Linux): by default when there are at
  least as many children as CPUs it may use. A child's threads take turns on one GIL, and
  when every core is busy the kernel keeps moving them between cores, each hand-off of
  the GIL waiting for a core: two unpinned children on two cores each ran only ~80% of
  the time with 1 ms CPU-bound jobs, pinned ones 93-100% (12% more jobs per second).
  A replacement child (restart or recycle) takes the CPU of the one it replaces.

Children notice a supervisor that died (their parent pid changes) and shut down.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from kaffi.worker.backoff import Backoff

__all__ = [
    "AFFINITY_MODES",
    "EXIT_CONFIG",
    "STARTS_PER_MINUTE",
    "Supervisor",
    "allowed_cpus",
    "plan_affinity",
]

log = logging.getLogger("kaffi.supervisor")

#: Exit status of a child that cannot start (bad app, refused password, unreachable
#: server): not restarted; the supervisor stops and reports the child's error.
EXIT_CONFIG = 78
#: Restart backoff for a child that died: a random wait up to a ceiling that doubles from
#: the first to the cap, reset once a child has lived for RESTART_RESET seconds.
RESTART_FIRST = 0.25
RESTART_CAP = 30.0
RESTART_RESET = 60.0
#: The most children started in one slot within STARTS_WINDOW seconds (see the module
#: docstring); the first start counts.
STARTS_PER_MINUTE = 10
STARTS_WINDOW = 60.0
#: After a shutdown is asked, how long past the job timeout children get before SIGKILL.
KILL_GRACE = 20.0
_FORWARDED = ("SIGTERM", "SIGINT", "SIGTSTP", "SIGTTIN")
#: ``cpu_affinity`` values: ``auto`` pins when there are at least as many children as
#: usable CPUs, ``on`` always (round robin), ``off`` never.
AFFINITY_MODES = ("auto", "on", "off")


def allowed_cpus() -> set[int] | None:
    """The CPUs this process may run on, or None where a process cannot be pinned."""
    getter = getattr(os, "sched_getaffinity", None)
    if getter is None or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        return set(getter(0))
    except OSError:
        return None


def plan_affinity(mode: str, processes: int, allowed: Collection[int] | None) -> list[int] | None:
    """The CPU for each child slot (``processes`` of them), or None to pin nothing.

    Children are spread round robin over ``allowed``; with a single usable CPU there is
    nothing to choose, so nothing is pinned. ``auto`` pins only when the children can
    fill every usable CPU: with CPUs to spare, the kernel finds a free one for a woken
    thread anyway, and pinning would only stop a child moving away from a busy core.
    """
    if mode not in AFFINITY_MODES:
        from kaffi.errors import ValidationError

        raise ValidationError(
            f"cpu_affinity must be one of {', '.join(AFFINITY_MODES)}, got {mode!r}",
            field="cpu_affinity",
        )
    if mode == "off" or not allowed or len(allowed) < 2:
        return None
    cpus = sorted(allowed)
    if mode == "auto" and processes < len(cpus):
        return None
    return [cpus[slot % len(cpus)] for slot in range(processes)]


@dataclass
class _Child:
    number: int
    process: BaseProcess
    pipe: Connection
    #: Which of the ``processes`` places it fills; its replacement fills the same one
    #: (and is pinned to the same CPU).
    slot: int = 0
    started: float = field(default_factory=time.monotonic)
    retiring: bool = False
    #: Why it could not start, as it said before exiting EXIT_CONFIG: (kind, message).
    failure: tuple[str, str] | None = None
    #: The child's worker loop runs (its own signal handlers are installed).
    ready: bool = False


def _child_main(
    app_path: str,
    options: dict[str, Any],
    log_level: str,
    log_format: str,
    pipe: Connection,
    parent_pid: int,
    cpu: int | None = None,
) -> None:
    """Entry point of a worker process (runs in a fresh interpreter)."""
    # Own process group: a terminal's Ctrl-C reaches us only through the supervisor.
    try:
        os.setpgid(0, 0)
    except (OSError, AttributeError):  # AttributeError: no process groups (Windows)
        pass
    pin_error: OSError | None = None
    if cpu is not None:
        # Before any thread starts: a thread takes its affinity from the one creating it.
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError as exc:  # the CPU went away (cgroup change): run unpinned
            pin_error = exc
    from kaffi.errors import ConnectError, KaffiError
    from kaffi.worker.joblog import configure_logging
    from kaffi.worker.loader import load_app
    from kaffi.worker.worker import Worker

    configure_logging(log_level, log_format)
    if pin_error is not None:
        log.warning("worker process %d cannot be pinned to CPU %s: %s", os.getpid(), cpu, pin_error)
    pipe_lock = threading.Lock()

    def tell(kind: str, text: str) -> bool:
        try:
            with pipe_lock:
                pipe.send((kind, text))
        except OSError:
            log.warning("cannot tell the supervisor %r (it may be gone)", kind)
            return False
        return True

    def on_recycle(reason: str) -> None:
        tell("recycle", reason)

    try:
        app = load_app(app_path)
        worker = Worker(app, on_recycle=on_recycle, parent_pid=parent_pid, **options)

        # Tell the supervisor once our handlers are in place: a TSTP it forwarded while we
        # were booting was ignored, and it sends it again then.
        def announce() -> None:
            if worker.ready.wait():
                tell("ready", "")

        threading.Thread(target=announce, daemon=True).start()
        worker.work()
    except KaffiError as exc:
        # The supervisor logs it and reports it as its own error; say it here only when
        # it cannot hear us.
        kind = "unreachable" if isinstance(exc, ConnectError) else "cannot-start"
        if not tell(kind, str(exc) or type(exc).__name__):
            log.error("worker process %d cannot run: %s", os.getpid(), exc)
        logging.shutdown()
        os._exit(EXIT_CONFIG)
    logging.shutdown()
    if worker.abandoned_threads:
        # Threads of jobs FAILed at shutdown may never end; the interpreter would wait.
        os._exit(0)


class Supervisor:
    """Runs ``processes`` worker processes for the app at ``app_path``; see the module
    docstring. ``worker_options`` are :class:`~kaffi.worker.Worker` keyword arguments
    (plain values: they travel to the children by pickle); ``wid`` there becomes the
    prefix of the children's wids. ``on_child_exit`` is called with the pid of every child
    that exited (metrics drop its live gauges then)."""

    def __init__(
        self,
        app_path: str,
        *,
        processes: int,
        worker_options: dict[str, Any],
        log_level: str = "INFO",
        log_format: str = "text",
        cpu_affinity: str = "auto",
        on_child_exit: Callable[[int], None] | None = None,
    ) -> None:
        if processes < 1:
            from kaffi.errors import ValidationError

            raise ValidationError(
                f"processes must be at least 1, got {processes}", field="processes"
            )
        self.app_path = app_path
        self.processes = processes
        options = dict(worker_options)
        self.prefix = options.pop("wid", None) or secrets.token_hex(4)
        self.worker_options = options
        self.log_level = log_level
        self.log_format = log_format
        #: The CPU of each slot, or None: children run wherever the kernel puts them.
        self.cpus = plan_affinity(cpu_affinity, processes, allowed_cpus())
        self.children: list[_Child] = []
        self._ctx = multiprocessing.get_context("spawn")
        self._started_count = 0
        self._stopping = False
        self._quiet_requested = False
        self._stop_deadline: float | None = None
        self._restarts: list[tuple[float, float, int]] = []  # (when, backoff used, slot)
        #: When each slot's children were started, within the last STARTS_WINDOW.
        self._starts: dict[int, list[float]] = {}
        self._backoff = Backoff(RESTART_FIRST, RESTART_CAP)
        # Set once any child has reached the server: from then on a child that cannot reach
        # it is living through an outage, not showing a mistake in the set-up.
        self._server_seen = False
        self._previous_handlers: dict[int, Any] = {}
        #: The first child's start-up failure, raised by run() once every child is gone.
        self._start_failure: tuple[str, str] | None = None
        self._on_child_exit = on_child_exit

    # -- children -------------------------------------------------------------------------

    def _start_child(self, slot: int) -> _Child:
        self._starts.setdefault(slot, []).append(time.monotonic())
        self._started_count += 1
        number = self._started_count
        cpu = None if self.cpus is None else self.cpus[slot]
        options = dict(self.worker_options, wid=f"{self.prefix}-{number}")
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_child_main,
            args=(
                self.app_path,
                options,
                self.log_level,
                self.log_format,
                writer,
                os.getpid(),
                cpu,
            ),
            name=f"kaffi-worker-{number}",
        )
        # The child starts with TSTP and TTIN ignored (an ignored signal stays ignored
        # across exec; a handled one would revert to its default, and TSTP's default
        # suspends the process): one forwarded while it boots must not freeze it. The
        # worker's own handlers replace these once its loop runs.
        quiet_signals = [s for s in (getattr(signal, n, None) for n in ("SIGTSTP", "SIGTTIN")) if s]
        saved = {signum: signal.signal(signum, signal.SIG_IGN) for signum in quiet_signals}
        try:
            process.start()
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)
        writer.close()
        child = _Child(number, process, reader, slot=slot)
        self.children.append(child)
        if self._stopping and process.pid is not None:
            # A shutdown signal arrived while this child was starting: it missed the
            # forwarding, so tell it now.
            os.kill(process.pid, signal.SIGTERM)
        log.info(
            "started worker process %d (pid %s, wid %s%s)",
            number,
            process.pid,
            options["wid"],
            "" if cpu is None else f", CPU {cpu}",
        )
        return child

    def _start_at(self, slot: int, earliest: float, why: str) -> float:
        """When a replacement for ``slot`` may start: ``earliest``, unless the slot had
        STARTS_PER_MINUTE starts within the window, then when the oldest leaves it (said
        in one line, with ``why`` the last child was replaced)."""
        starts = [t for t in self._starts.get(slot, []) if earliest - t < STARTS_WINDOW]
        self._starts[slot] = starts
        if len(starts) < STARTS_PER_MINUTE:
            return earliest
        when = starts[-STARTS_PER_MINUTE] + STARTS_WINDOW
        log.warning(
            "worker processes in place %d were started %d times in the last minute (last"
            " replaced: %s); waiting %.0fs before starting another",
            slot,
            len(starts),
            why,
            when - time.monotonic(),
        )
        return when

    def _replace(self, slot: int, why: str) -> None:
        """Start a replacement for ``slot`` now, or later when it was replaced too often."""
        now = time.monotonic()
        when = self._start_at(slot, now, why)
        if when <= now:
            self._start_child(slot)
        else:
            self._restarts.append((when, 0.0, slot))

    def _forward(self, signum: int, frame: FrameType | None = None) -> None:
        name = signal.Signals(signum).name
        if signum == getattr(signal, "SIGTSTP", None):
            self._quiet_requested = True
        if signum in (signal.SIGTERM, signal.SIGINT) and not self._stopping:
            self._stopping = True
            timeout = float(self.worker_options.get("timeout", 8.0))
            self._stop_deadline = time.monotonic() + timeout + KILL_GRACE
            log.info("%s: stopping %d worker processes", name, len(self.children))
        for child in list(self.children):
            if child.process.pid is not None and child.process.is_alive():
                try:
                    os.kill(child.process.pid, signum)
                except ProcessLookupError:
                    continue

    def _install_signals(self) -> None:
        for name in _FORWARDED:
            signum = getattr(signal, name, None)
            if signum is not None:
                self._previous_handlers[signum] = signal.signal(signum, self._forward)

    def _restore_signals(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start the children, supervise them until all have exited; return 0.

        When a child could not start (see the module docstring), the others are stopped
        and the child's error is raised once they are gone: ConnectError when it could
        not reach the server, ConfigurationError otherwise."""
        self._install_signals()
        try:
            log.info(
                "supervisor %d starting %d worker processes for %s (wid prefix %s)",
                os.getpid(),
                self.processes,
                self.app_path,
                self.prefix,
            )
            if self.cpus is not None:
                log.info(
                    "pinning each worker process to one CPU (%s); --cpu-affinity off lets"
                    " them move",
                    ", ".join(str(cpu) for cpu in sorted(set(self.cpus))),
                )
            for slot in range(self.processes):
                self._start_child(slot)
            while self.children or (self._restarts and not self._stopping):
                self._step()
        finally:
            self._restore_signals()
        log.info("supervisor %d: all worker processes have exited", os.getpid())
        if self._start_failure is not None:
            from kaffi.errors import ConfigurationError, ConnectError

            kind, message = self._start_failure
            raise (ConnectError if kind == "unreachable" else ConfigurationError)(message)
        return 0

    def _step(self) -> None:
        now = time.monotonic()
        timeout = 0.5
        if self._restarts and not self._stopping:
            timeout = max(0.0, min(timeout, min(r[0] for r in self._restarts) - now))
        waitables: list[Any] = [c.process.sentinel for c in self.children]
        waitables += [c.pipe for c in self.children if not c.pipe.closed]
        if waitables:
            multiprocessing.connection.wait(waitables, timeout=timeout)
        else:
            time.sleep(timeout)
        for child in list(self.children):
            self._read_messages(child)
            if not child.process.is_alive():
                self._reap(child)
        now = time.monotonic()
        due = [r for r in self._restarts if r[0] <= now]
        if due and not self._stopping:
            self._restarts = [r for r in self._restarts if r[0] > now]
            for _, _, slot in due:
                self._start_child(slot)
        if self._stopping:
            self._restarts.clear()
            if self._stop_deadline is not None and now > self._stop_deadline:
                for child in self.children:
                    if child.process.is_alive():
                        log.error(
                            "worker process %d (pid %s) did not stop: killing it",
                            child.number,
                            child.process.pid,
                        )
                        child.process.kill()
                self._stop_deadline = None

    def _read_messages(self, child: _Child) -> None:
        try:
            while not child.pipe.closed and child.pipe.poll():
                kind, reason = child.pipe.recv()
                if kind in ("unreachable", "cannot-start"):
                    child.failure = (kind, reason)
                elif kind == "ready":
                    child.ready = True
                    self._server_seen = True
                    if self._quiet_requested and child.process.pid is not None:
                        # It was still booting when TSTP came (and ignored it).
                        os.kill(child.process.pid, signal.SIGTSTP)
                elif kind == "recycle" and not child.retiring:
                    child.retiring = True
                    log.info(
                        "worker process %d (pid %s) recycling: %s",
                        child.number,
                        child.process.pid,
                        reason,
                    )
                    if not self._stopping:
                        self._replace(child.slot, f"recycling: {reason}")
        except (EOFError, OSError):
            child.pipe.close()

    def _reap(self, child: _Child) -> None:
        # What it said just before it exited (its reason for EXIT_CONFIG, say).
        self._read_messages(child)
        child.process.join(0)
        self.children.remove(child)
        child.pipe.close()
        if self._on_child_exit is not None and child.process.pid is not None:
            try:
                self._on_child_exit(child.process.pid)
            except Exception:  # an observer never stops the supervision
                log.exception("on_child_exit failed for pid %s", child.process.pid)
        code = child.process.exitcode
        lived = time.monotonic() - child.started
        if code == EXIT_CONFIG and not child.retiring and not self._outage(child):
            self._give_up(child)
            return
        if child.retiring or self._stopping:
            log.info(
                "worker process %d (pid %s) exited (%s)", child.number, child.process.pid, code
            )
            return
        if code == 0:
            log.info(
                "worker process %d (pid %s) finished on its own; not replaced",
                child.number,
                child.process.pid,
            )
            return
        if lived > RESTART_RESET:
            self._backoff.reset()
        wait = self._backoff.next()
        how = (
            f"killed by {signal.Signals(-code).name}"
            if code is not None and code < 0
            else f"exit status {code}"
        )
        log.warning(
            "worker process %d (pid %s) died (%s) after %.1fs; restarting in %.2fs",
            child.number,
            child.process.pid,
            how,
            lived,
            wait,
        )
        now = time.monotonic()
        when = self._start_at(child.slot, now + wait, f"died ({how})")
        self._restarts.append((when, wait, child.slot))

    def _outage(self, child: _Child) -> bool:
        """A replacement child that found the server gone, after the server was reached
        before: restart it with backoff like a crashed one (the server is expected back),
        instead of taking the whole worker down in the middle of an outage."""
        return self._server_seen and child.failure is not None and child.failure[0] == "unreachable"

    def _give_up(self, child: _Child) -> None:
        """A child could not start: restarting it would fail the same way, so stop the
        others (gracefully, as on SIGTERM) and leave with its error."""
        reason = child.failure[1] if child.failure is not None else "see the log above"
        if self._start_failure is None:
            self._start_failure = child.failure or (
                "cannot-start",
                f"worker process {child.number} could not start (exit status {EXIT_CONFIG});"
                " see the log above",
            )
        others = [c for c in self.children if c.process.is_alive()]
        log.error(
            "worker process %d cannot start: %s; not restarting it%s",
            child.number,
            reason,
            f", stopping the other {len(others)}" if others and not self._stopping else "",
        )
        if not self._stopping:
            self._stopping = True
            timeout = float(self.worker_options.get("timeout", 8.0))
            self._stop_deadline = time.monotonic() + timeout + KILL_GRACE
            for other in others:
                if other.process.pid is not None:
                    try:
                        os.kill(other.process.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        continue
