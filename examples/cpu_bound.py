"""CPU-bound jobs and ``kaffi worker --processes``.

Run it with ``python examples/cpu_bound.py``. Pure-Python number crunching holds the
GIL, so one worker process uses about one core however high its concurrency. The script
pushes the same batch of jobs twice and drains it with a burst worker started from the
command line, first with ``--processes 1`` and then with ``--processes 2``, and prints how
long each took. On a machine with two idle cores the second run takes roughly half as
long; on a busy machine the difference is smaller.

The worker processes import this module as ``cpu_bound:app`` (the script runs them with
this directory as their working directory), which is why ``app`` lives at the top level.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from _server import faktory_url, stopwatch, wait_until

from kaffi import App

app = App()  # the server comes from FAKTORY_URL or the worker's --url
say = stopwatch()
JOBS = 150  # ``python examples/cpu_bound.py 40``: 40 instead (the test suite does)
LIMIT = 20000  # about 15 ms of pure Python per job on a laptop


@app.task(queue="cpu")
def count_primes(limit: int) -> int:
    """Count the primes below ``limit`` the slow way: pure Python, all CPU."""
    count = 0
    for candidate in range(2, limit):
        if all(candidate % divisor for divisor in range(2, int(candidate**0.5) + 1)):
            count += 1
    return count


def drained() -> bool:
    """True once the queue is empty and no job is running."""
    info = app.client.info().faktory
    return info.queues.get("cpu", 0) == 0 and info.sets.get("working", 0) == 0


def drain_with(processes: int, url: str, jobs: int) -> float:
    """Seconds from starting ``kaffi worker --processes N --burst`` until the queue is
    empty and no job is running (the worker's start-up included, its exit not)."""
    count_primes.delay_many([(LIMIT,)] * jobs)
    command = [sys.executable, "-m", "kaffi", "worker", "cpu_bound:app", "--queues", "cpu"]
    command += ["--processes", str(processes), "--concurrency", "2", "--burst"]
    command += ["--url", url, "--log-level", "warning"]
    started = time.monotonic()
    worker = subprocess.Popen(command, cwd=Path(__file__).resolve().parent)
    try:
        wait_until(drained, timeout=120, what="the workers to drain the queue")
        elapsed = time.monotonic() - started
        if worker.wait(timeout=60) != 0:
            raise SystemExit(f"kaffi worker exited with status {worker.returncode}")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    return elapsed


def main() -> None:
    """Push the jobs twice and drain them with 1 and then 2 worker processes."""
    # Read here, not at import: the worker processes import this module too.
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else JOBS
    with faktory_url() as url:
        # The module-level App reads FAKTORY_URL when it first connects.
        os.environ["FAKTORY_URL"] = url
        say(f"{jobs} jobs of count_primes({LIMIT}), pure Python, pushed with delay_many")
        one = drain_with(1, url, jobs)
        say(f"kaffi worker --processes 1 drained them in {one:.2f} s")
        two = drain_with(2, url, jobs)
        say(f"kaffi worker --processes 2 drained them in {two:.2f} s")
        say(f"speed-up with 2 processes: {one / two:.2f}x (both times include start-up)")
        app.close()


if __name__ == "__main__":
    main()
