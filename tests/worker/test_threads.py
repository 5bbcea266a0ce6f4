"""The job threads: context, errors, the size limit."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading

import pytest

from kaffi.worker.threads import JobThreads
from tests.support import wait_until

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


def test_calls_run_in_threads_with_the_callers_context() -> None:
    async def main() -> tuple[str, str]:
        threads = JobThreads(asyncio.get_running_loop(), 2, "t")
        var.set("from the loop")
        try:
            return await threads.run(lambda: (var.get(), threading.current_thread().name))
        finally:
            threads.shutdown()

    value, name = asyncio.run(main())
    assert value == "from the loop"
    assert name == "t_0"


@pytest.mark.parametrize(
    "error", [ValueError("boom"), SystemExit(3), KeyboardInterrupt(), StopIteration()]
)
def test_whatever_the_call_raises_reaches_the_caller(error: BaseException) -> None:
    def fail() -> None:
        raise error

    async def main() -> None:
        threads = JobThreads(asyncio.get_running_loop(), 1, "t")
        try:
            # PEP 479: a StopIteration leaving a coroutine becomes a RuntimeError.
            expected = RuntimeError if isinstance(error, StopIteration) else type(error)
            with pytest.raises(expected):
                await threads.run(fail)
            # The thread survived it.
            assert await threads.run(lambda: 42) == 42
        finally:
            threads.shutdown()

    asyncio.run(main())


def test_never_more_threads_than_the_size() -> None:
    names: list[str] = []
    gate = threading.Event()
    lock = threading.Lock()

    def held() -> None:
        with lock:
            names.append(threading.current_thread().name)
        gate.wait(10)

    def three_running() -> None:
        wait_until(lambda: len(names) >= 3, "three calls to start")

    async def main() -> None:
        threads = JobThreads(asyncio.get_running_loop(), 3, "t")
        calls = [asyncio.ensure_future(threads.run(held)) for _ in range(7)]
        await asyncio.get_running_loop().run_in_executor(None, three_running)
        gate.set()
        await asyncio.gather(*calls)
        threads.shutdown()

    asyncio.run(main())
    assert len(names) == 7
    assert len(set(names)) == 3  # seven calls, three threads


def test_shut_down_threads_refuse_new_calls() -> None:
    async def main() -> None:
        threads = JobThreads(asyncio.get_running_loop(), 1, "t")
        threads.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            await threads.run(lambda: None)

    asyncio.run(main())


def test_a_long_call_never_holds_up_the_calls_queued_behind_it() -> None:
    # All the calls are queued in one go, before any thread runs: the thread that takes
    # the first (blocked until the last one runs) must have sent another for the rest.
    last_ran = threading.Event()

    def first() -> str:
        assert last_ran.wait(10), "the calls behind a long call never ran"
        return "first"

    def last() -> str:
        last_ran.set()
        return "last"

    async def main() -> list[str]:
        threads = JobThreads(asyncio.get_running_loop(), 3, "t")
        try:
            calls = [threads.run(first), threads.run(lambda: "middle"), threads.run(last)]
            return await asyncio.wait_for(asyncio.gather(*calls), 20)
        finally:
            threads.shutdown()

    assert asyncio.run(main()) == ["first", "middle", "last"]


def test_as_many_blocking_calls_as_threads_all_run_at_once() -> None:
    size = 5
    barrier = threading.Barrier(size)

    async def main() -> list[int]:
        threads = JobThreads(asyncio.get_running_loop(), size, "t")
        try:
            calls = [threads.run(lambda: barrier.wait(10)) for _ in range(size)]
            return await asyncio.wait_for(asyncio.gather(*calls), 20)
        finally:
            threads.shutdown()

    assert sorted(asyncio.run(main())) == list(range(size))


def test_bursts_of_short_calls_run_on_the_threads_and_shutdown_ends_them() -> None:
    size = 4
    seen: set[str] = set()

    def call(i: int) -> int:
        seen.add(threading.current_thread().name)
        return i

    async def main() -> tuple[list[int], list[threading.Thread]]:
        threads = JobThreads(asyncio.get_running_loop(), size, "t")
        results: list[int] = []
        for burst in range(20):
            numbers = range(burst * 10, burst * 10 + 10)
            batch = [threads.run(functools.partial(call, i)) for i in numbers]
            results += await asyncio.wait_for(asyncio.gather(*batch), 20)
            await asyncio.sleep(0)
        started = list(threads._threads)
        threads.shutdown()
        return results, started

    results, started = asyncio.run(main())
    assert results == list(range(200))
    assert seen <= {f"t_{i}" for i in range(size)}
    assert 1 <= len(started) <= size
    for thread in started:  # parked or not, every thread ends after shutdown()
        thread.join(10)
        assert not thread.is_alive()
