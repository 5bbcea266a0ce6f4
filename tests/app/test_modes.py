"""app.testing.inline() and app.testing.fake()."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from datetime import date
from typing import Any

import pytest

from kaffi import App, JobContext, current_job
from kaffi.errors import ConfigurationError, JobError, ValidationError


class Boom(Exception):
    pass


def mode_of(app: App) -> str | None:
    # A function, so mypy does not narrow app.testing.mode across the with blocks.
    return app.testing.mode


def make_app(**options: Any) -> tuple[App, list[Any]]:
    app = App(**options)
    seen: list[Any] = []

    @app.task
    def record(day: date, values: tuple[int, int], raw: Any = None) -> Any:
        seen.append((day, values, raw, current_job().jid))

        def provider(ctx: JobContext) -> None:
            seen.append(("provider", ctx.tag))

        return provider

    def tag(ctx: JobContext, next: Callable[[], None]) -> None:
        ctx.tag = "mw"
        next()

    app.use(tag)
    return app, seen


# -- inline -------------------------------------------------------------------------------


def test_inline_runs_at_once_after_a_json_round_trip() -> None:
    app, seen = make_app()
    record = app.tasks["record"]
    with app.testing.inline():
        assert mode_of(app) == "inline"
        jid = record.delay(date(2024, 1, 2), (1, 2), raw=(3, 4))
    assert mode_of(app) is None
    # Typed arguments come back as their types; an untyped tuple comes back as JSON made it.
    assert seen == [(date(2024, 1, 2), (1, 2), [3, 4], jid), ("provider", "mw")]


def test_inline_exception_propagates_to_the_caller() -> None:
    app = App()
    error = Boom("job failed")

    @app.task
    def fails() -> None:
        raise error

    with app.testing.inline(), pytest.raises(Boom) as info:
        fails.delay()
    assert info.value is error


def test_inline_still_validates_at_delay_time() -> None:
    app, seen = make_app()
    with app.testing.inline(), pytest.raises(ValidationError):
        app.tasks["record"].delay("not a date", (1, 2))
    assert seen == []


def test_inline_async_task_and_delay_async() -> None:
    app = App()
    seen: list[Any] = []

    @app.task
    async def job(x: int) -> None:
        await asyncio.sleep(0)
        seen.append((x, current_job().jobtype))

    with app.testing.inline():
        job.delay(1)
        asyncio.run(job.delay_async(2))
    assert seen == [(1, "job"), (2, "job")]


def test_inline_sync_delay_inside_a_running_loop() -> None:
    app = App()
    seen: list[int] = []

    @app.task
    async def job(x: int) -> None:
        seen.append(x)

    async def handler() -> None:
        job.delay(5)  # a sync call from async code: runs on a helper thread's loop

    with app.testing.inline():
        asyncio.run(handler())
    assert seen == [5]


def test_inline_delay_async_runs_on_the_callers_loop() -> None:
    app = App()
    loops: list[asyncio.AbstractEventLoop] = []

    @app.task
    async def job() -> None:
        loops.append(asyncio.get_running_loop())

    async def main() -> asyncio.AbstractEventLoop:
        await job.delay_async()
        return asyncio.get_running_loop()

    with app.testing.inline():
        loop = asyncio.run(main())
    assert loops == [loop]


def test_inline_async_worker_middleware() -> None:
    app = App()
    seen: list[str] = []

    async def mw(ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
        seen.append("before")
        await next()
        seen.append("after")

    app.use(mw)
    app.register("job", lambda: seen.append("job"))
    with app.testing.inline():
        app.tasks["job"].delay()
    assert seen == ["before", "job", "after"]


def test_inline_delay_many_runs_every_job() -> None:
    app = App()
    seen: list[int] = []

    @app.task
    def job(x: int) -> None:
        seen.append(x)

    with app.testing.inline():
        assert job.delay_many([(1,), (2,)]) == []
        assert asyncio.run(job.delay_many_async([(3,)])) == []
    assert seen == [1, 2, 3]


def test_inline_from_another_thread() -> None:
    app = App()
    seen: list[str] = []
    app.register("job", lambda: seen.append(threading.current_thread().name))

    def producer() -> None:
        app.tasks["job"].delay()

    with app.testing.inline():
        thread = threading.Thread(target=producer, name="producer")
        thread.start()
        thread.join(30)
    assert seen == ["producer"]


def test_app_built_in_inline_mode() -> None:
    app, seen = make_app(testing="inline")
    app.tasks["record"].delay(date(2024, 1, 1), (0, 0))
    assert len(seen) == 2
    assert mode_of(app) == "inline"


# -- fake ---------------------------------------------------------------------------------


def test_fake_collects_payloads_for_assertions() -> None:
    app, seen = make_app()
    record = app.tasks["record"]

    @app.task(queue="other")
    def other() -> None:
        return None

    with app.testing.fake() as jobs:
        jid = record.delay(date(2024, 1, 2), (1, 2))
        other.delay()
        assert len(jobs) == 2
        assert jobs.jids == [jid, jobs[1].jid]
        assert jobs[0].args == ["2024-01-02", [1, 2]]
        assert jobs[0].enqueued_at is not None
        assert [j.jobtype for j in jobs.of_type(other)] == ["other"]
        assert [j.queue for j in jobs.of_type("other")] == ["other"]
        assert app.testing.jobs is jobs
        assert "2 jobs" in repr(jobs)
        assert seen == []
        jobs.clear()
        assert len(jobs) == 0


def test_fake_run_all_drains_through_perform() -> None:
    app, seen = make_app()
    record = app.tasks["record"]

    @app.task
    def fan_out(n: int) -> None:
        for i in range(n):
            record.delay(date(2024, 1, i + 1), (i, i))

    with app.testing.fake() as jobs:
        fan_out.delay(2)
        assert jobs.run_all() == 3  # fan_out, then the two jobs it pushed
        assert len(jobs) == 0
    assert [s[0] for s in seen if s[0] != "provider"] == [date(2024, 1, 1), date(2024, 1, 2)]
    assert seen[1] == ("provider", "mw")


def test_fake_run_all_stops_at_the_first_error() -> None:
    app = App()
    ran: list[int] = []

    @app.task
    def job(x: int) -> None:
        if x == 2:
            raise Boom
        ran.append(x)

    with app.testing.fake() as jobs:
        job.delay_many([(1,), (2,), (3,)])
        with pytest.raises(Boom):
            jobs.run_all()
        assert [j.args for j in jobs] == [[3]]
        assert jobs.run_all() == 1
    assert ran == [1, 3]


def test_fake_run_all_async_and_delay_async() -> None:
    app = App()
    ran: list[int] = []

    @app.task
    async def job(x: int) -> None:
        ran.append(x)

    async def main() -> int:
        await job.delay_async(1)
        await job.delay_many_async([(2,)])
        return await app.testing.jobs.run_all_async()

    with app.testing.fake():
        assert asyncio.run(main()) == 2
    assert ran == [1, 2]


def test_fake_run_all_refuses_an_endless_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    import kaffi.app.testing as modes

    monkeypatch.setattr(modes, "MAX_RUN_ALL", 5)
    app = App()

    @app.task
    def again() -> None:
        again.delay()

    with app.testing.fake() as jobs:
        again.delay()
        with pytest.raises(JobError, match="run_all ran 5 jobs and more keep coming"):
            jobs.run_all()
        assert len(jobs) == 1


def test_modes_nest_and_restore() -> None:
    app = App()
    with app.testing.fake() as outer:
        with app.testing.inline():
            assert mode_of(app) == "inline"
        assert app.testing.jobs is outer
    assert mode_of(app) is None
    assert app.delivery is None


def test_jobs_outside_fake_mode_is_an_error() -> None:
    app = App()
    with pytest.raises(ConfigurationError, match="only there in fake mode"):
        _ = app.testing.jobs


def test_app_built_in_fake_mode_and_bad_mode() -> None:
    app = App(testing="fake")
    app.register("job", lambda: None)
    app.tasks["job"].delay()
    assert len(app.testing.jobs) == 1
    with pytest.raises(ConfigurationError, match="testing mode must be 'inline' or 'fake'"):
        App(testing="live")  # type: ignore[arg-type]


def test_inline_plain_middleware_and_job_share_current_job() -> None:
    app = App()
    seen: list[tuple[str, str]] = []

    def mw(ctx: JobContext, next: Callable[[], None]) -> None:
        seen.append(("mw", current_job().jid))
        next()

    @app.task
    def job() -> None:
        seen.append(("job", current_job().jid))

    app.use(mw)
    with app.testing.inline():
        jid = job.delay()
    assert seen == [("mw", jid), ("job", jid)]
