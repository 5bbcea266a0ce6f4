"""The koa-style around-chain that runs middleware on both sides of a job.

A middleware is ``async def mw(ctx, next): ...; await next()`` or a plain
``def mw(ctx, next): ...; next()``. They run in registration order, each around the rest
of the chain; one that never calls ``next`` stops the chain there (for a worker the job
then counts as done). Exceptions travel out unchanged, so a middleware can catch what the
rest of the chain raised, and whoever runs the chain decides what an error means.

The same chain serves two callers:

- :func:`run_chain` inside an event loop (the worker's ``perform`` and ``delay_async``).
  A plain middleware may block, so it runs through ``run_sync`` (the worker's thread pool);
  its ``next()`` hands the rest of the chain back to the loop and waits for it, so a plain
  middleware wraps async jobs exactly as an async one does. While it waits, its thread
  runs the rest of the chain's blocking calls, so one job never holds two pool threads.
- :func:`run_chain_blocking` in plain synchronous code (``Task.delay``). Plain middleware
  are called directly; an async one gets a private event loop for its call.

This module knows nothing about jobs, clients or workers: it only composes callables.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

from kaffi.errors import JobError

__all__ = [
    "Middleware",
    "RunSync",
    "is_async_callable",
    "run_chain",
    "run_chain_blocking",
    "run_coroutine_blocking",
    "run_serving_blocking_calls",
]

T = TypeVar("T")

#: ``(ctx, next) -> None`` for plain middleware, ``(ctx, next) -> Awaitable[None]`` for async.
Middleware = Callable[[Any, Callable[[], Any]], Any]


class RunSync(Protocol):
    """Runs a blocking callable off the event loop and awaits its result (the worker maps
    it to its thread pool, copying contextvars into the thread)."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]:
        """Run ``fn`` off the event loop; the awaitable gives its result or raises its error."""


def is_async_callable(fn: object) -> bool:
    """True for ``async def`` functions, partials of them and objects with an async
    ``__call__``: those must be awaited rather than run in a thread."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the class attribute, not callable()
    return call is not None and inspect.iscoroutinefunction(call)


async def _default_run_sync(fn: Callable[[], T]) -> T:
    # The loop's default executor, with the caller's contextvars (current_job) carried over.
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, contextvars.copy_context().run, fn)


class _Once:
    """Refuses a second call of the same ``next``: running the rest of a chain twice would
    run a job twice, which is never what a middleware means."""

    __slots__ = ("called", "position")

    def __init__(self, position: int) -> None:
        self.called = False
        self.position = position

    def check(self) -> None:
        if self.called:
            raise JobError(f"middleware #{self.position + 1} called next() more than once")
        self.called = True


async def run_chain(
    middleware: Sequence[Middleware],
    ctx: Any,
    core: Callable[[RunSync | None], Awaitable[None]],
    run_sync: RunSync | None = None,
) -> None:
    """Run ``middleware`` around ``core`` inside the running event loop.

    Plain middleware run through ``run_sync`` (the loop's default executor when it is
    None). Their ``next()`` runs the rest of the chain on the loop and blocks their thread
    until it is done; meanwhile that thread serves the blocking calls the rest of the
    chain makes (further plain middleware, a plain job function). A chain therefore holds
    at most one pool thread however it mixes plain and async parts: a pool sized to the
    concurrency can never run out of threads with every job waiting for one more.

    ``core`` gets the ``run_sync`` to use for its own blocking work (None: call inline).
    """
    if not middleware:
        await core(run_sync)
        return
    await _Run(middleware, _kinds(middleware), ctx, core).step(0, run_sync)


#: ``id(sequence) -> (its middleware, which of them are async)``: run_chain classifies a
#: chain once, not per job (``is_async_callable`` costs more than the rest of a step).
#: The snapshot is compared on every use, so a list changed in place (or a new list at a
#: reused id) is classified again.
_KINDS: dict[int, tuple[tuple[Middleware, ...], tuple[bool, ...]]] = {}
#: Chains remembered at most (App lists are few and long-lived; anything beyond is churn).
_KINDS_MAX = 64


def _kinds(middleware: Sequence[Middleware]) -> tuple[bool, ...]:
    """For each middleware, whether it is async (see :func:`is_async_callable`)."""
    snapshot = tuple(middleware)
    known = _KINDS.get(id(middleware))
    if known is not None and known[0] == snapshot:
        return known[1]
    kinds = tuple(is_async_callable(mw) for mw in snapshot)
    if len(_KINDS) >= _KINDS_MAX:
        _KINDS.clear()
    _KINDS[id(middleware)] = (snapshot, kinds)
    return kinds


class _Run:
    """One run of a chain (one job or one push) inside the event loop.

    Each step hands back an awaitable rather than being a coroutine of its own: an async
    middleware's ``await next()`` awaits the next middleware's coroutine (or the core's)
    directly, so a middleware adds its own coroutine and one small ``next`` object per
    job, and no layers of dispatching coroutines and closures around them.
    """

    __slots__ = ("core", "count", "ctx", "kinds", "middleware")

    def __init__(
        self,
        middleware: Sequence[Middleware],
        kinds: tuple[bool, ...],
        ctx: Any,
        core: Callable[[RunSync | None], Awaitable[None]],
    ) -> None:
        self.middleware = middleware
        self.kinds = kinds
        self.count = len(kinds)
        self.ctx = ctx
        self.core = core

    def step(self, i: int, current: RunSync | None) -> Awaitable[None]:
        """What runs the chain from middleware ``i`` on (the core after the last one)."""
        if i >= self.count:
            return self.core(current)
        mw = self.middleware[i]
        if self.kinds[i]:
            result: Awaitable[None] = mw(self.ctx, _AsyncNext(self, i, current))
            return result
        return self._plain(i, mw, current)

    async def _plain(self, i: int, mw: Middleware, current: RunSync | None) -> None:
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()
        once = _Once(i)

        def next_blocking() -> None:
            once.check()
            if threading.get_ident() == loop_thread:
                # Blocking here would wait for the loop we are blocking: a deadlock.
                raise JobError(
                    f"middleware #{i + 1} ({_name(mw)}) called next() on the event loop thread;"
                    " a plain middleware's next() must run in a worker thread: make it async"
                )
            _run_rest_from_thread(loop, functools.partial(self.step, i + 1))

        offload = current if current is not None else _default_run_sync
        result = await offload(functools.partial(mw, self.ctx, next_blocking))
        if inspect.isawaitable(result):
            await result


class _AsyncNext:
    """The ``next`` an async middleware gets: calling it gives the rest of the chain to
    await, once."""

    __slots__ = ("_called", "_current", "_i", "_run")

    def __init__(self, run: _Run, i: int, current: RunSync | None) -> None:
        self._run = run
        self._i = i
        self._current = current
        self._called = False

    def __call__(self) -> Awaitable[None]:
        if self._called:
            raise JobError(f"middleware #{self._i + 1} called next() more than once")
        self._called = True
        return self._run.step(self._i + 1, self._current)


_DONE = object()


def _run_rest_from_thread(
    loop: asyncio.AbstractEventLoop,
    rest: Callable[[RunSync], Awaitable[None]],
) -> None:
    """From a thread blocked in a plain middleware: run ``rest`` on ``loop`` and serve its
    blocking calls in this thread until it is done, then return or raise its outcome."""
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def borrowed(fn: Callable[[], T]) -> Awaitable[T]:
        # Called on the loop: hand ``fn`` to the waiting thread, with the caller's context.
        future: asyncio.Future[T] = loop.create_future()
        inbox.put((fn, future, contextvars.copy_context()))
        return future

    async def run_rest() -> None:
        try:
            await rest(borrowed)
        finally:
            inbox.put(_DONE)

    outcome = asyncio.run_coroutine_threadsafe(run_rest(), loop)
    while (item := inbox.get()) is not _DONE:
        fn, future, context = item
        try:
            value = context.run(fn)
        except BaseException as exc:  # handed to the loop, where the chain re-raises it
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, value, None)
    outcome.result()


def _settle(future: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def run_chain_blocking(
    middleware: Sequence[Middleware], ctx: Any, core: Callable[[], None]
) -> None:
    """Run ``middleware`` around ``core`` in synchronous code (no event loop needed).

    Plain middleware are called directly; an async one runs on a private event loop
    (see :func:`run_coroutine_blocking`) with a ``next`` that runs the rest synchronously.
    """
    if not middleware:
        core()
        return
    count = len(middleware)

    def dispatch(i: int) -> None:
        if i == count:
            core()
            return
        mw = middleware[i]
        once = _Once(i)
        if is_async_callable(mw):

            async def next_async() -> None:
                once.check()
                dispatch(i + 1)

            async def call() -> None:
                await mw(ctx, next_async)

            run_coroutine_blocking(call)
            return

        def next_blocking() -> None:
            once.check()
            dispatch(i + 1)

        result = mw(ctx, next_blocking)
        if inspect.isawaitable(result):
            run_coroutine_blocking(functools.partial(_await, result))

    dispatch(0)


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


def run_coroutine_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``factory()`` makes to completion and return its result.

    In a thread without a running loop this is ``asyncio.run``. A thread that is already
    running a loop cannot block on another coroutine itself, so the coroutine then runs on
    a fresh loop in a helper thread (with this thread's contextvars) while this one waits.
    Exceptions are re-raised unchanged.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())

    context = contextvars.copy_context()
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(context.run(asyncio.run, factory()))
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            failure.append(exc)

    helper = threading.Thread(target=target, name="kaffi-blocking-call", daemon=True)
    helper.start()
    helper.join()
    if failure:
        raise failure[0]
    result: T = outcome[0]
    return result


def run_serving_blocking_calls(
    factory: Callable[[RunSync], Coroutine[Any, Any, T]],
) -> T:
    """Run the coroutine ``factory(run_sync)`` on a private event loop in a helper thread
    while this thread runs every blocking call it hands to ``run_sync``; return its result.

    The testing modes run jobs this way from synchronous code: a plain job function (and
    a plain middleware) then runs in the caller's thread with no event loop running in
    it, as a worker's job thread runs it. Code that refuses to run next to a running loop
    (Django's ORM, ``asyncio.run``, asgiref's ``async_to_sync``) works as in a worker,
    and thread-bound state (a database connection inside a test's transaction) is the
    caller's. Exceptions are re-raised unchanged.
    """
    loop = asyncio.new_event_loop()
    helper = threading.Thread(target=loop.run_forever, name="kaffi-blocking-loop", daemon=True)
    helper.start()
    result: list[T] = []

    async def run(run_sync: RunSync) -> None:
        result.append(await factory(run_sync))

    try:
        _run_rest_from_thread(loop, run)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        helper.join()
        loop.close()
    return result[0]


def _name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__
