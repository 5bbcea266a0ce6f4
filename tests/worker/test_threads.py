"""The job threads: context, errors, the size limit."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from kaffi.worker.threads import JobThreads

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
        deadline = time.monotonic() + 10
        while len(names) < 3:
            assert time.monotonic() < deadline, "three calls never started"
            time.sleep(0.005)

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
