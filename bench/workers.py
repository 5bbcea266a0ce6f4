"""Measuring a worker process, whoever wrote it: drain rate, start-up time, idle memory.

A worker is given as a *spawner*: a function that starts the worker process on a queue
and returns its :class:`subprocess.Popen`. The same three measurements then apply to
kaffi's worker and to every peer's:

- :func:`drain`: fill a fresh queue with the jobs first (raw PUSHB, so filling costs the
  client under test nothing), start the worker, and time from the first job taken to the
  queue empty with nothing reserved, reading INFO every 10 ms near both ends and more
  rarely in between (:meth:`ServerControl.wait_drained`). Start-up is measured
  separately, so it does not count against a drain.
- :func:`startup`: with one job waiting, the time from spawning the process to the job
  being fetched: interpreter start, imports, connecting and the first FETCH.
- the idle RSS of the worker (and its whole process tree) a second after that job.

After a worker stops, :func:`settle` flushes the server and waits out the FETCH a stopped
worker may still have blocked on the server (about 2 s), so no run steals another's jobs;
each run also uses its own queue name, so a stale FETCH cannot even see the next run's jobs.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.harness import (
    FETCH_BLOCK_SECONDS,
    BenchError,
    Deadline,
    Gauge,
    ServerControl,
    Throughput,
    cpu_seconds,
    process_tree,
    rss_mb,
    stop_process,
    tree_cpu_seconds,
    tree_rss_mb,
)

__all__ = [
    "IDLE_RSS_METRIC",
    "IDLE_TREE_METRIC",
    "STARTUP_METRIC",
    "Spawner",
    "drain",
    "fresh_queue",
    "paired_drains",
    "settle",
    "startup",
]

Spawner = Callable[[str], "subprocess.Popen[bytes]"]

STARTUP_METRIC = "start-up to first FETCH"
IDLE_RSS_METRIC = "idle RSS per worker process"
IDLE_TREE_METRIC = "idle RSS, all processes"

_queue_numbers = itertools.count(1)


def fresh_queue(prefix: str) -> str:
    """A queue name no earlier run used."""
    return f"{prefix}-{next(_queue_numbers)}"


def settle(control: ServerControl, *, wait_fetches: bool) -> None:
    """Flush, then (``wait_fetches``) outlast any FETCH a stopped worker left blocked."""
    control.flush()
    if wait_fetches:
        time.sleep(FETCH_BLOCK_SECONDS + 0.2)
    control.flush()


def drain(
    control: ServerControl,
    spawn: Spawner,
    *,
    operation: str,
    client: str,
    jobs: int,
    jobtype: str = "noop",
    args: Sequence[Any] = (),
    exits_when_done: bool = False,
    timeout: float = 300.0,
    stop_timeout: float = 15.0,
    wait_fetches: bool = True,
    server_pid: int | None = None,
    note: str = "",
) -> Throughput:
    """Time ``spawn``'s worker draining ``jobs`` jobs. ``exits_when_done``: the worker
    leaves by itself once the queue is empty (kaffi's ``--burst``); others get SIGTERM.
    The CPU the worker's processes (and the server, given ``server_pid``) used between the
    first job taken and the drain is recorded too."""
    queue = fresh_queue("bench")
    control.flush()
    control.fill(jobs, jobtype=jobtype, queue=queue, args=args)
    proc = spawn(queue)
    try:
        measured = _watch_drain(control, proc, queue, client, operation, jobs, timeout, server_pid)
        if exits_when_done:
            _wait_exit(proc, stop_timeout)
    finally:
        stop_process(proc, timeout=stop_timeout, group=True)
        settle(control, wait_fetches=wait_fetches)
    measured.note = note
    return measured


def paired_drains(
    control: ServerControl,
    sides: Sequence[tuple[str, Spawner]],
    *,
    operation: str,
    jobs: int,
    blocks: int,
    timeout: float = 300.0,
    stop_timeout: float = 15.0,
    wait_fetches: bool = True,
    server_pid: int | None = None,
) -> list[list[Throughput]]:
    """Drains of the same size by long-running workers, side by side in short blocks:
    the cost of an option (``kaffi worker --metrics``) against the same worker without it.

    :func:`drain` starts a worker per run, so two runs are 6-8 s apart, and on this
    virtual machine the speed of everything (the server's CPU per job included, which no
    worker option changes) drifts by 20-40% over that much time. Here every side's worker
    is started once, each on its own queue; then, ``blocks`` times, each side in turn
    (the order alternating from block to block) gets ``jobs`` jobs, queued while its
    queue is paused and released at once with QUEUE RESUME, and is timed from the first
    job taken to the queue drained, as in :func:`drain`. The two drains of a block are
    about a second apart, so their ratio sees the same machine. Returns, per block, one
    Throughput per side in the order of ``sides``."""
    control.flush()
    queues = [fresh_queue("bench-ab") for _ in sides]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for (_, spawn), queue in zip(sides, queues, strict=True):
            procs.append(spawn(queue))
            # One job makes the queue known (QUEUE PAUSE ignores unknown names) and shows
            # the worker is up and fetching before any block is timed.
            control.fill(1, queue=queue)
            control.wait_drained(queue, 1, timeout=timeout)
        out: list[list[Throughput]] = []
        for block in range(blocks):
            order = list(range(len(sides)))
            if block % 2:
                order.reverse()
            row: dict[int, Throughput] = {}
            for i in order:
                row[i] = _timed_block(
                    control, procs[i], queues[i], sides[i][0], operation, jobs, timeout, server_pid
                )
            out.append([row[i] for i in range(len(sides))])
        return out
    finally:
        for proc in procs:
            stop_process(proc, timeout=stop_timeout, group=True)
        settle(control, wait_fetches=wait_fetches)


def _timed_block(
    control: ServerControl,
    proc: subprocess.Popen[bytes],
    queue: str,
    client: str,
    operation: str,
    jobs: int,
    timeout: float,
    server_pid: int | None,
) -> Throughput:
    """One block of :func:`paired_drains`: ``jobs`` jobs queued behind a pause, then
    released and drained by the worker already waiting on ``queue``."""
    if proc.poll() is not None:
        raise BenchError(f"the {client} worker exited with code {proc.returncode}")
    control.queue("PAUSE", queue)
    control.fill(jobs, queue=queue)
    control.queue("RESUME", queue)
    return _watch_drain(control, proc, queue, client, operation, jobs, timeout, server_pid)


def _watch_drain(
    control: ServerControl,
    proc: subprocess.Popen[bytes],
    queue: str,
    client: str,
    operation: str,
    jobs: int,
    timeout: float,
    server_pid: int | None,
) -> Throughput:
    """Time ``proc`` draining the ``jobs`` waiting in ``queue``, from the first job taken
    to the queue empty with nothing reserved, with the CPU the worker's processes (and
    the server, given ``server_pid``) used over that span."""
    marks: list[float | None] = []

    def at_first() -> None:
        marks.append(tree_cpu_seconds(proc.pid))
        marks.append(cpu_seconds(server_pid) if server_pid else None)

    first, done = control.wait_drained(queue, jobs, timeout=timeout, on_first=at_first)
    client_end = tree_cpu_seconds(proc.pid)
    server_end = cpu_seconds(server_pid) if server_pid else None
    client_start, server_start = marks if marks else (None, None)
    return Throughput(
        operation,
        client,
        jobs,
        max(done - first, 1e-6),
        client_cpu=_delta(client_start, client_end),
        server_cpu=_delta(server_start, server_end),
    )


def _delta(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(end - start, 0.0)


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"the worker did not exit within {timeout:.0f} s of its queue draining"
        ) from None
    if code != 0:
        raise BenchError(f"the worker exited with code {code}")


def startup(
    control: ServerControl,
    spawn: Spawner,
    *,
    client: str,
    idle_seconds: float = 1.0,
    timeout: float = 60.0,
    stop_timeout: float = 15.0,
    wait_fetches: bool = True,
    largest_process: bool = False,
) -> list[Gauge]:
    """Start-up to the first FETCH (one job waiting), then idle RSS ``idle_seconds`` later:
    of the process started, or (``largest_process``, for a supervisor and its workers) of
    the largest process in its tree."""
    queue = fresh_queue("bench-start")
    control.flush()
    control.fill(1, queue=queue)
    started = time.monotonic()
    proc = spawn(queue)
    try:
        taken = control.wait_taken(queue, timeout=timeout)
        deadline = Deadline(timeout)
        while control.pending(queue)[1] and not deadline.expired:
            time.sleep(0.01)
        if proc.poll() is not None:
            raise BenchError(f"the worker exited with code {proc.returncode} while idle")
        time.sleep(idle_seconds)
        if largest_process:
            sizes = [rss_mb(p) for p in process_tree(proc.pid)]
            own = max((s for s in sizes if s is not None), default=None)
        else:
            own = rss_mb(proc.pid)
        tree = tree_rss_mb(proc.pid)
    finally:
        stop_process(proc, timeout=stop_timeout, group=True)
        settle(control, wait_fetches=wait_fetches)
    gauges = [Gauge(STARTUP_METRIC, client, taken - started, "s")]
    if own is not None and tree is not None:
        total, count = tree
        if count > 1:
            gauges.append(Gauge(IDLE_TREE_METRIC, client, total, "MB", note=f"{count} processes"))
        gauges.append(Gauge(IDLE_RSS_METRIC, client, own, "MB"))
    return gauges
