"""The around-chain runner, in an event loop and in plain synchronous code."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from kaffi.app.middleware import (
    Middleware,
    RunSync,
    is_async_callable,
    run_chain,
    run_chain_blocking,
    run_coroutine_blocking,
)
from kaffi.errors import JobError

T = TypeVar("T")


class Boom(Exception):
    pass


def recorder(log: list[str], name: str) -> tuple[Middleware, Middleware]:
    def plain(ctx: Any, next: Callable[[], None]) -> None:
        log.append(f"{name}>")
        next()
        log.append(f"<{name}")

    async def coro(ctx: Any, next: Callable[[], Awaitable[None]]) -> None:
        log.append(f"{name}>")
        await next()
        log.append(f"<{name}")

    return plain, coro


def pool_run_sync(pool: ThreadPoolExecutor) -> Callable[[Callable[[], T]], Awaitable[T]]:
    async def run_sync(fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, contextvars.copy_context().run, fn)

    return run_sync


@pytest.mark.parametrize("with_pool", [True, False])
def test_mixed_chain_runs_in_registration_order(with_pool: bool) -> None:
    log: list[str] = []
    a_plain, _ = recorder(log, "a")
    _, b_async = recorder(log, "b")
    c_plain, _ = recorder(log, "c")

    async def core(run_sync: RunSync | None) -> None:
        await asyncio.sleep(0)
        log.append("core")

    async def main() -> None:
        if with_pool:
            with ThreadPoolExecutor(2) as pool:
                await run_chain([a_plain, b_async, c_plain], object(), core, pool_run_sync(pool))
        else:
            await run_chain([a_plain, b_async, c_plain], object(), core)

    asyncio.run(main())
    assert log == ["a>", "b>", "c>", "core", "<c", "<b", "<a"]


def test_plain_middleware_runs_off_the_loop_thread_and_core_on_it() -> None:
    threads: dict[str, int] = {}

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        threads["mw"] = threading.get_ident()
        next()

    async def core(run_sync: RunSync | None) -> None:
        threads["core"] = threading.get_ident()

    async def main() -> None:
        threads["loop"] = threading.get_ident()
        await run_chain([plain], None, core)

    asyncio.run(main())
    assert threads["core"] == threads["loop"]
    assert threads["mw"] != threads["loop"]


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_middleware_that_does_not_call_next_skips_the_rest(kind: str) -> None:
    log: list[str] = []

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        log.append("stop")

    async def coro(ctx: Any, next: Callable[[], Awaitable[None]]) -> None:
        log.append("stop")

    after_plain, _ = recorder(log, "after")

    async def core(run_sync: RunSync | None) -> None:
        log.append("core")

    asyncio.run(run_chain([plain if kind == "plain" else coro, after_plain], None, core))
    assert log == ["stop"]


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_exceptions_propagate_unchanged_and_can_be_caught(kind: str) -> None:
    error = Boom("from the job")
    caught: list[BaseException] = []

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        try:
            next()
        except Boom as exc:
            caught.append(exc)
            raise

    async def coro(ctx: Any, next: Callable[[], Awaitable[None]]) -> None:
        try:
            await next()
        except Boom as exc:
            caught.append(exc)
            raise

    async def core(run_sync: RunSync | None) -> None:
        raise error

    with pytest.raises(Boom) as info:
        asyncio.run(run_chain([plain if kind == "plain" else coro], None, core))
    assert info.value is error
    assert caught == [error]


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_middleware_can_swallow_an_error(kind: str) -> None:
    swallowed: list[Boom] = []
    after: list[str] = []
    error = Boom()

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        try:
            next()
        except Boom as exc:
            swallowed.append(exc)

    async def coro(ctx: Any, next: Callable[[], Awaitable[None]]) -> None:
        try:
            await next()
        except Boom as exc:
            swallowed.append(exc)

    def outer(ctx: Any, next: Callable[[], None]) -> None:
        next()  # returns normally: the error never reaches this middleware
        after.append("outer")

    async def core(run_sync: RunSync | None) -> None:
        raise error

    chain = [outer, plain if kind == "plain" else coro]
    assert asyncio.run(run_chain(chain, None, core)) is None
    assert swallowed == [error]
    assert after == ["outer"]


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_next_twice_is_refused(kind: str) -> None:
    runs: list[int] = []

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        next()
        next()

    async def coro(ctx: Any, next: Callable[[], Awaitable[None]]) -> None:
        await next()
        await next()

    async def core(run_sync: RunSync | None) -> None:
        runs.append(1)

    with pytest.raises(JobError, match=r"middleware #1 called next\(\) more than once"):
        asyncio.run(run_chain([plain if kind == "plain" else coro], None, core))
    assert runs == [1]


def test_plain_next_on_the_loop_thread_is_refused_not_deadlocked() -> None:
    async def on_loop(fn: Callable[[], T]) -> T:
        return fn()

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        next()

    async def core(run_sync: RunSync | None) -> None:
        return None

    with pytest.raises(JobError, match="called next\\(\\) on the event loop thread"):
        asyncio.run(run_chain([plain], None, core, on_loop))


def test_context_object_is_shared() -> None:
    class Ctx:
        db: str = ""

    def plain(ctx: Ctx, next: Callable[[], None]) -> None:
        ctx.db = "conn"
        next()

    seen: list[str] = []

    async def core(run_sync: RunSync | None) -> None:
        seen.append(ctx.db)

    ctx = Ctx()
    asyncio.run(run_chain([plain], ctx, core))
    assert seen == ["conn"]


def test_async_callable_detection() -> None:
    class AsyncCall:
        async def __call__(self, ctx: Any, next: Any) -> None:
            await next()

    class PlainCall:
        def __call__(self, ctx: Any, next: Any) -> None:
            next()

    async def coro(ctx: Any, next: Any) -> None:
        await next()

    import functools

    assert is_async_callable(coro)
    assert is_async_callable(functools.partial(coro))
    assert is_async_callable(AsyncCall())
    assert not is_async_callable(PlainCall())
    assert not is_async_callable(lambda ctx, next: next())


# -- blocking chain -----------------------------------------------------------------------


def test_blocking_chain_with_plain_and_async_middleware() -> None:
    log: list[str] = []
    a_plain, _ = recorder(log, "a")
    _, b_async = recorder(log, "b")
    run_chain_blocking([a_plain, b_async], None, lambda: log.append("core"))
    assert log == ["a>", "b>", "core", "<b", "<a"]


def test_blocking_chain_inside_a_running_loop() -> None:
    log: list[str] = []
    _, b_async = recorder(log, "b")

    async def main() -> None:
        run_chain_blocking([b_async], None, lambda: log.append("core"))

    asyncio.run(main())
    assert log == ["b>", "core", "<b"]


def test_blocking_chain_propagates_errors() -> None:
    error = Boom()

    def core() -> None:
        raise error

    _, b_async = recorder([], "b")
    with pytest.raises(Boom) as info:
        run_chain_blocking([b_async], None, core)
    assert info.value is error


def test_blocking_chain_without_middleware_calls_core() -> None:
    log: list[str] = []
    run_chain_blocking([], None, lambda: log.append("core"))
    assert log == ["core"]


def test_run_coroutine_blocking_returns_and_raises() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise Boom("x")

    assert run_coroutine_blocking(value) == 42
    with pytest.raises(Boom):
        run_coroutine_blocking(fail)

    async def main() -> int:
        return run_coroutine_blocking(value)

    assert asyncio.run(main()) == 42


def test_run_coroutine_blocking_keeps_contextvars_inside_a_loop() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")

    async def read() -> str:
        return var.get()

    async def main() -> str:
        var.set("outer")
        return run_coroutine_blocking(read)

    assert asyncio.run(main()) == "outer"


def test_plain_middleware_lends_its_thread_to_the_rest_of_the_chain() -> None:
    # One pool thread, two plain middleware and a blocking core: the thread blocked in
    # the first middleware serves the rest, so nothing waits for a second thread.
    threads: list[int] = []

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        threads.append(threading.get_ident())
        next()

    async def async_mw(ctx: Any, next: Callable[[], Awaitable[None]]) -> None:
        await next()

    async def core(run_sync: RunSync | None) -> None:
        assert run_sync is not None
        threads.append(await run_sync(threading.get_ident))

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            await asyncio.wait_for(
                run_chain([plain, async_mw, plain], None, core, pool_run_sync(pool)), 30
            )

    asyncio.run(main())
    assert len(threads) == 3
    assert len(set(threads)) == 1


def test_lent_thread_reports_errors_of_blocking_calls() -> None:
    error = Boom()

    def plain(ctx: Any, next: Callable[[], None]) -> None:
        next()

    def explode() -> None:
        raise error

    async def core(run_sync: RunSync | None) -> None:
        assert run_sync is not None
        await run_sync(explode)

    with pytest.raises(Boom) as info:
        asyncio.run(run_chain([plain], None, core))
    assert info.value is error


def test_a_chain_changed_in_place_is_classified_again() -> None:
    """run_chain remembers which middleware are async per list; a list changed in place
    (a plain middleware swapped for an async one at the same place) is seen anew."""
    log: list[str] = []
    plain, coro = recorder(log, "a")
    chain: list[Middleware] = [plain]

    async def core(run_sync: RunSync | None) -> None:
        log.append("core")

    async def twice() -> None:
        await run_chain(chain, None, core)
        chain[0] = coro
        await run_chain(chain, None, core)
        chain.append(recorder(log, "b")[0])
        await run_chain(chain, None, core)

    asyncio.run(twice())
    assert log == ["a>", "core", "<a"] * 2 + ["a>", "b>", "core", "<b", "<a"]


def test_an_async_next_hands_back_the_rest_to_await_once() -> None:
    """next() of an async middleware gives the awaitable of the rest of the chain: the
    next middleware runs only when it is awaited."""
    log: list[str] = []
    _, inner = recorder(log, "inner")

    async def outer(ctx: Any, next: Callable[[], Awaitable[None]]) -> None:
        rest = next()
        log.append("got rest")
        await rest

    async def core(run_sync: RunSync | None) -> None:
        log.append("core")

    asyncio.run(run_chain([outer, inner], None, core))
    assert log == ["got rest", "inner>", "core", "<inner"]
