"""The testing modes run plain jobs like a worker's job thread does: in the caller's
thread, with no event loop running there (so asyncio.run, async_to_sync or Django's ORM
work inside them as they do in a worker)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from kaffi import App


def probe() -> tuple[int, bool]:
    """This thread, and whether an event loop runs in it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return threading.get_ident(), False
    return threading.get_ident(), True


def make_app(seen: list[tuple[str, int, bool]]) -> App:
    app = App()

    def plain_middleware(ctx: Any, next: Callable[[], None]) -> None:
        seen.append(("middleware", *probe()))
        next()

    app.use(plain_middleware)

    @app.task
    def plain() -> None:
        seen.append(("job", *probe()))

        async def inner() -> int:
            return 7

        # What a worker's job thread allows and a running loop would refuse.
        assert asyncio.run(inner()) == 7

    return app


def test_inline_runs_a_plain_job_in_the_callers_thread_without_a_loop() -> None:
    seen: list[tuple[str, int, bool]] = []
    app = make_app(seen)
    with app.testing.inline():
        app.tasks["plain"].delay()
    me = threading.get_ident()
    assert seen == [("middleware", me, False), ("job", me, False)]


def test_fake_run_all_runs_plain_jobs_in_the_callers_thread_without_a_loop() -> None:
    seen: list[tuple[str, int, bool]] = []
    app = make_app(seen)
    with app.testing.fake() as jobs:
        app.tasks["plain"].delay()
        app.tasks["plain"].delay()
        assert jobs.run_all() == 2
    me = threading.get_ident()
    assert seen == [("middleware", me, False), ("job", me, False)] * 2
