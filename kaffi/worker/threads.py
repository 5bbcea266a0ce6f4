"""The threads that run plain (blocking) job functions for one worker's event loop.

A lean replacement for ``loop.run_in_executor(ThreadPoolExecutor)`` on the per-job path:
a job goes to the threads through a deque and comes back through another that the loop
drains, woken by one ``loop.call_soon_threadsafe`` for however many outcomes pile up
meanwhile, with no ``concurrent.futures.Future`` and no future chaining in between (that
bookkeeping cost more than the no-op jobs it carried).

Waking a thread is the dear part of a hand-off (a system call, a context switch, the
GIL changing hands), so a call wakes a thread only when no thread is awake to take it,
and a thread that takes a call while more wait wakes the next one *before* running its
own. A burst of short calls is then run by the few threads already awake, one after the
other, while a long call still never holds up the calls behind it: whenever calls wait,
a thread that is not inside a call is on its way to take the next one, until every
thread is busy (the size is the limit, as for any pool).

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
        #: Guards _calls, _parked, _free and _closed, which threads and the loop change.
        self._lock = threading.Lock()
        #: Calls waiting for a thread, oldest first.
        self._calls: collections.deque[_Item] = collections.deque()
        #: The parking locks of the threads waiting for work: each thread blocks on its
        #: own (held) lock, so releasing one wakes that thread and no other.
        self._parked: list[threading.Lock] = []
        #: Threads awake and not inside a call: each looks at _calls before it parks.
        self._free = 0
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
        item = (fn, contextvars.copy_context(), future)
        with self._lock:
            self._calls.append(item)
            if not self._free:
                self._wake_one()
        try:
            result, error = await future
        finally:
            self._busy -= 1
        if error is not None:
            raise error
        return result

    def _wake_one(self) -> None:
        """Put one more thread on its way to the calls: a parked one, else a new one while
        there are fewer than ``size``. When every thread is inside a call, the first to
        finish takes the next. Called with the lock held."""
        if self._parked:
            self._free += 1
            self._parked.pop().release()
        elif len(self._threads) < self._size:
            self._free += 1
            parking = threading.Lock()
            parking.acquire()
            thread = threading.Thread(
                target=self._serve,
                args=(parking,),
                name=f"{self._name}_{len(self._threads)}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, parking: threading.Lock) -> None:
        lock = self._lock
        calls = self._calls
        finished = self._finished
        call_soon = self._loop.call_soon_threadsafe
        while True:
            # Here this thread counts as free (counted by whoever started or woke it, or
            # after its last call, below).
            with lock:
                if calls:
                    fn, context, future = calls.popleft()
                    self._free -= 1
                    if calls and not self._free:
                        # More calls wait and no other thread is coming for them; this
                        # call may be long, so the next one gets a thread now.
                        self._wake_one()
                elif self._closed:
                    self._free -= 1
                    return
                else:
                    self._free -= 1
                    self._parked.append(parking)
                    fn = None
            if fn is None:
                parking.acquire()  # released by _wake_one or shutdown, which count us free
                continue
            try:
                result = context.run(fn)
            except BaseException as exc:  # handed to the awaiting coroutine, never lost
                outcome: _Outcome = (None, exc)
            else:
                outcome = (result, None)
            del fn, context
            with lock:
                self._free += 1
            # Append first, then look at the flag; the loop clears the flag first, then
            # drains. So an outcome is either drained by a wake-up already on its way or
            # this thread sends one: never stranded (at worst a wake-up finds nothing).
            finished.append((future, outcome))
            del future
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
        """Let idle threads end; busy ones end after their call (and after the calls
        already waiting). Does not wait."""
        with self._lock:
            self._closed = True
            while self._parked:
                self._free += 1
                self._parked.pop().release()
