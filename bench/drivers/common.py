"""What the Python drivers share: argument parsing, the report line, the thread fan-out.

Standard library only: this runs in the bench-only virtualenv next to the peer client.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["THREADS", "Args", "noop", "parse_args", "report", "run_threads", "start_clock"]

#: Threads in the "enqueue from 8 threads" operation.
THREADS = 8


class Args:
    """``OP N QUEUE`` from the command line."""

    def __init__(self, argv: list[str]) -> None:
        if len(argv) < 2:
            raise SystemExit(f"usage: {argv[0] if argv else 'driver'} OP [N] [QUEUE]")
        self.op = argv[1]
        self.n = int(argv[2]) if len(argv) > 2 else 0
        self.queue = argv[3] if len(argv) > 3 else "default"


def parse_args() -> Args:
    return Args(sys.argv)


def start_clock() -> tuple[float, float]:
    """Wall and CPU clocks now, for :func:`report`."""
    return time.perf_counter(), time.process_time()


def report(jobs: int, started: tuple[float, float]) -> None:
    """The timing line: jobs, wall seconds and this process's CPU seconds since ``started``."""
    wall, cpu = started
    doc = {"jobs": jobs, "seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
    print(json.dumps(doc), flush=True)


def noop() -> None:
    """The no-op job every worker in the suite runs."""


def run_threads(make_pusher: Callable[[], Callable[[int], None]], n: int) -> None:
    """Push ``n`` jobs from :data:`THREADS` threads, each with the pusher ``make_pusher``
    built for it (connected before the clock starts), and report the time."""
    share = [n // THREADS + (1 if i < n % THREADS else 0) for i in range(THREADS)]
    pushers = [make_pusher() for _ in range(THREADS)]
    ready = threading.Barrier(THREADS + 1, timeout=60)
    errors: list[BaseException] = []

    def lane(pusher: Callable[[int], None], count: int) -> None:
        try:
            ready.wait()
            pusher(count)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=lane, args=(p, c), daemon=True)
        for p, c in zip(pushers, share, strict=True)
    ]
    for t in threads:
        t.start()
    ready.wait()
    started = start_clock()
    for t in threads:
        t.join(300)
    if errors:
        raise errors[0]
    report(n, started)
