"""The App the metrics tests run in real workers: ``tests.contrib.metrics_app:app``.

``ok`` succeeds, ``boom`` raises (the worker FAILs it), and ``skipped`` never runs: a
middleware drops it by not calling ``next``. All go to the queue ``metrics``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from kaffi import App
from kaffi.app.execution import JobContext

app = App()


@app.task(queue="metrics")
def ok(n: int) -> int:
    """Succeeds."""
    return n


@app.task(queue="metrics")
def boom() -> None:
    """Fails every time."""
    raise RuntimeError("boom on purpose")


@app.task(queue="metrics")
def skipped() -> None:
    """Never reached: :func:`drop_skipped` stops the chain first."""
    raise AssertionError("the middleware should have dropped this job")


async def drop_skipped(ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
    """Drop ``skipped`` jobs (the worker ACKs them; metrics count them as dropped)."""
    if ctx.jobtype != "skipped":
        await next()


app.use(drop_skipped)
