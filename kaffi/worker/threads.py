"""The threads that run plain (blocking) job functions for one worker's event loop.

A lean replacement for ``loop.run_in_executor(ThreadPoolExecutor)`` on the per-job path:
a job goes to the threads through one :class:`queue.SimpleQueue` and comes back through a
deque that the loop drains, woken by one ``loop.call_soon_threadsafe`` for however many
outcomes pile up meanwhile, with no ``concurrent.futures.Future`` and no future chaining
in between (that bookkeeping cost more than the no-op jobs it carried).

- Each call runs in a copy of the caller's contextvars (``kaffi.current_job()`` and the
  per-job log context work in the thread).
- Threads start on demand, up to ``size``, and are daemons: a job still running when the
  worker has given up on it (it was FAILed at shutdown) cannot keep the process alive.
- Whatever the function raises, ``SystemExit`` and ``KeyboardInterrupt`` included, is
  raised to the awaiting coroutine; it never kills the thread.

It knows nothing about jobs: it runs callables.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["JobThreads"]

T = TypeVar("T")

_Item = tuple[Callable[[], Any], contextvars.Context, "asyncio.Future[Any]"]
_Outcome = tuple[Any, BaseException | None]


def _settle(future: asyncio.Future[Any], outcome: _Outcome) -> None:
    # The outcome travels as a result even for an error: a future refuses StopIteration
    # as an exception, which would leave the caller waiting forever.
    if not future.cancelled():  # the awaiting coroutine may have been cancelled meanwhile
        future.set_result(outcome)


class JobThreads:
    """Up to ``size`` threads running callables for ``loop``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str) -> None:
        self._loop = loop
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._busy = 0  # calls handed out and not yet settled; touched on the loop only
        self._closed = False
        #: Outcomes the threads finished, waiting for the loop to hand them out. One
        #: wake-up of the loop (a self-pipe write each) serves every outcome that piles up
        #: before the loop gets to them, instead of one wake-up per call.
        self._finished: collections.deque[tuple[asyncio.Future[Any], _Outcome]] = (
            collections.deque()
        )
        self._wake_pending = False

    def __repr__(self) -> str:
        return (
            f"<JobThreads {self._name} threads={len(self._threads)}/{self._size} busy={self._busy}>"
        )

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in a thread and return (or raise) what it did."""
        if self._closed:
            raise RuntimeError("the job threads are shut down")
        future: asyncio.Future[tuple[T, BaseException | None]] = self._loop.create_future()
        self._busy += 1
        if self._busy > len(self._threads) and len(self._threads) < self._size:
            self._start_thread()
        self._queue.put((fn, contextvars.copy_context(), future))
        try:
            result, error = await future
        finally:
            self._busy -= 1
        if error is not None:
            raise error
        return result

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._serve, name=f"{self._name}_{len(self._threads)}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        get = self._queue.get
        finished = self._finished
        call_soon = self._loop.call_soon_threadsafe
        while True:
            item = get()
            if item is None:
                return
            fn, context, future = item
            try:
                result = context.run(fn)
            except BaseException as exc:  # handed to the awaiting coroutine, never lost
                outcome: _Outcome = (None, exc)
            else:
                outcome = (result, None)
            del item, fn, context
            # Append first, then look at the flag; the loop clears the flag first, then
            # drains. So an outcome is either drained by a wake-up already on its way or
            # this thread sends one: never stranded (at worst a wake-up finds nothing).
            finished.append((future, outcome))
            if not self._wake_pending:
                self._wake_pending = True
                try:
                    call_soon(self._deliver)
                except RuntimeError:
                    # The loop is closed: the worker stopped and gave up on this call.
                    return

    def _deliver(self) -> None:
        """On the loop: hand every finished outcome to its awaiting coroutine."""
        self._wake_pending = False
        finished = self._finished
        while finished:
            future, outcome = finished.popleft()
            _settle(future, outcome)

    def shutdown(self) -> None:
        """Let idle threads end; busy ones end after their call. Does not wait."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
