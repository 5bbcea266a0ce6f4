"""The App the benchmark's kaffi workers run: ``kaffi worker bench.tasks:app``.

``noop`` measures the framework and nothing else; ``noop_async`` is the same as an
``async def`` (run on the worker's event loop rather than in its thread pool); ``spin`` is
a CPU-bound job of pure Python whose size the harness calibrates to about 1 ms
(:func:`calibrate_spin`). The server comes from ``FAKTORY_URL``, as for any kaffi worker.
"""

from __future__ import annotations

import time

from kaffi import App

__all__ = ["app", "calibrate_spin", "noop", "noop_async", "spin", "spin_loops"]

app = App()


@app.task
def noop() -> None:
    """Does nothing, so a drain measures the worker, not the job."""


@app.task
async def noop_async() -> None:
    """Does nothing on the worker's event loop."""


def spin_loops(loops: int) -> int:
    """``loops`` rounds of integer arithmetic in pure Python (holds the GIL throughout)."""
    total = 0
    for i in range(loops):
        total = (total + i * i) % 1_000_003
    return total


@app.task
def spin(loops: int) -> int:
    """A CPU-bound job: see :func:`spin_loops`."""
    return spin_loops(loops)


def calibrate_spin(target: float = 0.001, *, rounds: int = 7) -> int:
    """How many loops of :func:`spin_loops` take ``target`` seconds on this interpreter
    (the best of ``rounds`` timings, so a busy neighbour does not shrink the job)."""
    probe = 20_000
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        spin_loops(probe)
        best = min(best, time.perf_counter() - start)
    return max(1, round(probe * target / max(best, 1e-9)))
