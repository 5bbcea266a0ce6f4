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

from _server import faktory_url, stopwatch

from kaffi import App

app = App()  # the server comes from FAKTORY_URL or the worker's --url
say = stopwatch()
JOBS = 120


@app.task(queue="cpu")
def count_primes(limit: int) -> int:
    """Count the primes below ``limit`` the slow way: pure Python, all CPU."""
    count = 0
    for candidate in range(2, limit):
        if all(candidate % divisor for divisor in range(2, int(candidate**0.5) + 1)):
            count += 1
    return count


def drain_with(processes: int, url: str) -> float:
    count_primes.delay_many([(6000,)] * JOBS)
    started = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "kaffi",
            "worker",
            "cpu_bound:app",
            "--queues",
            "cpu",
            "--processes",
            str(processes),
            "--concurrency",
            "2",
            "--burst",
            "--url",
            url,
            "--log-level",
            "WARNING",
        ],
        cwd=Path(__file__).resolve().parent,
        check=True,
        timeout=120,
    )
    return time.monotonic() - started


def main() -> None:
    with faktory_url() as url:
        # The module-level App reads FAKTORY_URL when it first connects.
        os.environ["FAKTORY_URL"] = url
        say(f"{JOBS} jobs of count_primes(6000), about a few ms of pure Python each")
        one = drain_with(1, url)
        say(f"kaffi worker --processes 1 drained them in {one:.2f} s")
        two = drain_with(2, url)
        say(f"kaffi worker --processes 2 drained them in {two:.2f} s")
        say("(both times include starting the worker and its burst-mode exit)")
        app.close()


if __name__ == "__main__":
    main()
