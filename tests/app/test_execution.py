"""perform(): the job core the worker and the testing modes share."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any, TypeVar

import pytest

import kaffi
from kaffi import App, JobContext, current_job
from kaffi.app.execution import perform
from kaffi.errors import ArgumentsError, JobError, UnknownJobType
from kaffi.protocol.models import JobPayload

T = TypeVar("T")


class Boom(Exception):
    pass


def job(jobtype: str, *args: Any, **fields: Any) -> JobPayload:
    return JobPayload.create(jobtype=jobtype, args=list(args), **fields)


def run(app: App, payload: JobPayload, **kwargs: Any) -> JobContext:
    return asyncio.run(perform(app, payload, **kwargs))


def pool_run_sync(pool: ThreadPoolExecutor) -> Callable[[Callable[[], T]], Awaitable[T]]:
    async def run_sync(fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, contextvars.copy_context().run, fn)

    return run_sync


def test_sync_task_gets_converted_arguments() -> None:
    app = App()
    seen: list[Any] = []

    @app.task
    def remind(day: date, times: int = 1) -> None:
        seen.append((day, times))

    ctx = run(app, job("remind", "2024-03-04", "2"))
    assert seen == [(date(2024, 3, 4), 2)]
    assert ctx.task is remind
    assert ctx.fn is remind.fn
    assert ctx.jobtype == "remind"
    assert ctx.app is app


def test_async_task_runs_on_the_loop() -> None:
    app = App()
    seen: list[int] = []

    @app.task
    async def add(a: int, b: int) -> None:
        await asyncio.sleep(0)
        seen.append(a + b)

    run(app, job("add", 1, 2))
    assert seen == [3]


def test_sync_task_runs_through_run_sync_with_current_job() -> None:
    app = App()
    seen: dict[str, Any] = {}

    @app.task
    def work() -> None:
        seen["thread"] = threading.get_ident()
        seen["jid"] = current_job().jid

    payload = job("work")

    async def main() -> None:
        seen["loop"] = threading.get_ident()
        with ThreadPoolExecutor(1) as pool:
            await perform(app, payload, run_sync=pool_run_sync(pool))

    asyncio.run(main())
    assert seen["jid"] == payload.jid
    assert seen["thread"] != seen["loop"]


def test_unknown_jobtype_is_a_clear_error() -> None:
    app = App()

    @app.task
    def known() -> None:
        return None

    with pytest.raises(UnknownJobType, match=r"no task is registered for jobtype 'nope'.*known"):
        run(app, job("nope"))


def test_middleware_sees_unknown_jobtypes_too() -> None:
    app = App()
    seen: list[Any] = []

    async def observe(ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
        seen.append((ctx.jobtype, ctx.task, ctx.fn))
        await next()

    app.use(observe)
    with pytest.raises(UnknownJobType):
        run(app, job("nope"))
    assert seen == [("nope", None, None)]


def test_bad_arguments_name_task_and_parameter() -> None:
    app = App()

    @app.task
    def charge(amount: int) -> None:
        del amount

    with pytest.raises(ArgumentsError, match="task 'charge': argument 'amount'"):
        run(app, job("charge", "ten"))


def test_job_exception_propagates_unchanged() -> None:
    app = App()
    error = Boom("bad")

    @app.task
    def fails() -> None:
        raise error

    with pytest.raises(Boom) as info:
        run(app, job("fails"))
    assert info.value is error


@pytest.mark.parametrize("fn_kind", ["sync", "async"])
@pytest.mark.parametrize("provider_kind", ["sync", "async"])
def test_context_provider_gets_the_context(fn_kind: str, provider_kind: str) -> None:
    app = App()
    seen: list[Any] = []

    def sync_provider(ctx: JobContext) -> None:
        seen.append(("provider", ctx.db, ctx.args))

    async def async_provider(ctx: JobContext) -> None:
        await asyncio.sleep(0)
        seen.append(("provider", ctx.db, ctx.args))

    provider = sync_provider if provider_kind == "sync" else async_provider

    def sync_fn(x: int) -> Any:
        seen.append(("fn", x))
        return provider

    async def async_fn(x: int) -> Any:
        seen.append(("fn", x))
        return provider

    app.register("job", sync_fn if fn_kind == "sync" else async_fn)

    def with_db(ctx: JobContext, next: Callable[[], None]) -> None:
        ctx.db = "conn"
        next()

    app.use(with_db)
    with ThreadPoolExecutor(1) as pool:
        run(app, job("job", 7), run_sync=pool_run_sync(pool))
    assert seen == [("fn", 7), ("provider", "conn", [7])]


@pytest.mark.parametrize("fn_kind", ["sync", "async"])
def test_returned_class_is_not_a_provider(fn_kind: str) -> None:
    app = App()
    ran: list[str] = []
    constructed: list[tuple[object, ...]] = []

    class Recorder:
        # Called as a provider, it would be constructed with the job's context.
        def __init__(self, *args: object) -> None:
            constructed.append(args)

    def make() -> type:
        ran.append("sync")
        return Recorder

    async def amake() -> type:
        ran.append("async")
        return Recorder

    app.register("make", make if fn_kind == "sync" else amake)
    ctx = run(app, job("make"))
    assert ran == [fn_kind]
    assert constructed == []
    assert ctx.jobtype == "make"


def test_sync_function_returning_a_coroutine_is_awaited() -> None:
    app = App()
    seen: list[str] = []

    async def real() -> None:
        seen.append("ran")

    def wrapper() -> Any:
        return real()

    app.register("wrapped", wrapper)
    run(app, job("wrapped"))
    assert seen == ["ran"]


def test_middleware_not_calling_next_skips_the_job() -> None:
    app = App()
    ran: list[int] = []

    @app.task
    def never() -> None:
        ran.append(1)

    app.use(lambda ctx, next: None)
    ctx = run(app, job("never"))
    assert ran == []
    assert ctx.jobtype == "never"
    assert ctx.performed is False


def test_performed_says_the_chain_reached_the_job() -> None:
    app = App()

    @app.task
    def noop() -> None:
        return None

    seen: list[bool] = []

    async def watch(ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
        seen.append(ctx.performed)
        await next()
        seen.append(ctx.performed)

    app.use(watch)
    payload = job("noop")
    ctx = JobContext(app, payload)
    assert ctx.performed is False
    assert run(app, payload, ctx=ctx).performed is True
    assert seen == [False, True]
    # A context used again starts over.
    app.use(lambda ctx, next: None)
    assert run(app, payload, ctx=ctx).performed is False


def test_middleware_exception_propagates() -> None:
    app = App()
    error = Boom()

    @app.task
    def fine() -> None:
        return None

    async def broken(ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
        raise error

    app.use(broken)
    with pytest.raises(Boom) as info:
        run(app, job("fine"))
    assert info.value is error


def test_current_job_in_middleware_and_async_job() -> None:
    app = App()
    seen: list[str] = []

    @app.task
    async def inspect_me() -> None:
        seen.append(kaffi.current_job().jid)

    def mw(ctx: JobContext, next: Callable[[], None]) -> None:
        seen.append(current_job().jid)
        next()

    app.use(mw)
    payload = job("inspect_me")
    run(app, payload)
    assert seen == [payload.jid, payload.jid]


def test_current_job_outside_a_job_raises() -> None:
    with pytest.raises(JobError, match="outside a running job"):
        current_job()


def test_current_job_is_reset_after_perform() -> None:
    app = App()
    app.register("noop", lambda: None)

    async def main() -> None:
        await perform(app, job("noop"))
        with pytest.raises(JobError):
            current_job()

    asyncio.run(main())


def test_given_context_is_filled_in_and_returned() -> None:
    app = App()

    @app.task
    def noop() -> None:
        return None

    payload = job("noop")
    ctx = JobContext(app, payload)
    ctx.worker_id = "w1"
    out = run(app, payload, ctx=ctx)
    assert out is ctx
    assert ctx.task is noop
    assert ctx.worker_id == "w1"


def test_context_missing_attribute_message() -> None:
    app = App()
    ctx = JobContext(app, job("x"))
    with pytest.raises(AttributeError, match=r"has no attribute 'db'; a middleware must set it"):
        _ = ctx.db
    assert "jobtype='x'" in repr(ctx)
    assert ctx.queue == "default"
    assert ctx.custom is None
