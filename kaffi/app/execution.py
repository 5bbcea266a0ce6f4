"""Running one job: :class:`JobContext`, :func:`current_job` and :func:`perform`.

``perform`` is the one place where a fetched job becomes a function call. The worker calls
it for every job it fetches, and the inline and fake testing modes call it too, so a test
sees exactly what a worker would: the worker middleware around the job, the arguments
converted back to the annotated types, and the ContextProvider rule (a job function that
returns a callable gets it called, or awaited, with the context).

``perform`` never decides what an error means: whatever the job or a middleware raises
propagates unchanged and the caller (the worker: FAIL; inline mode: the test) handles it.
It does no network I/O.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kaffi._bases import forwarded
from kaffi.app.middleware import Middleware, RunSync, is_async_callable, run_chain
from kaffi.errors import JobError, UnknownJobType
from kaffi.protocol.batches import current_bid
from kaffi.protocol.enterprise import track_set_document
from kaffi.protocol.models import JobPayload

if TYPE_CHECKING:
    from kaffi.app.app import App
    from kaffi.app.batch import Batch
    from kaffi.app.task import Task

__all__ = ["JobContext", "current_job", "perform"]

_current_job: contextvars.ContextVar[JobContext] = contextvars.ContextVar("kaffi_current_job")


class JobContext:
    """What middleware and ContextProviders get for one job.

    ``job`` is the :class:`~kaffi.protocol.models.JobPayload` as fetched, ``fn`` the task
    function, ``task`` the :class:`~kaffi.app.task.Task` (both None for a jobtype nobody
    registered, so middleware still sees such jobs before they fail), and ``app`` the App.
    ``performed`` turns True when the chain reaches the job (every middleware called
    ``next``); a job that ends with it False was dropped by a middleware.
    Middleware may hang their own attributes on it (``ctx.db = conn``); the job function
    reaches them through its ContextProvider or :func:`current_job`.
    """

    job: JobPayload
    fn: Callable[..., Any] | None
    task: Task[Any, Any] | None
    app: App
    performed: bool

    def __init__(self, app: App, job: JobPayload, task: Task[Any, Any] | None = None) -> None:
        # Straight into __dict__: __setattr__ below exists only to let mypy accept user
        # attributes, and the per-job path should not pay for it.
        self.__dict__.update(
            app=app, job=job, task=task, fn=task.fn if task else None, performed=False
        )

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes nobody set: say which job and what exists.
        job = self.__dict__.get("job")
        which = f" for job {job.jid} ({job.jobtype})" if job is not None else ""
        raise AttributeError(
            f"JobContext{which} has no attribute {name!r}; a middleware must set it first"
            f" (ctx.{name} = ...)"
        )

    jid = forwarded[str]("job.jid", "The job's id.")
    jobtype = forwarded[str]("job.jobtype", "The job's type (the task name).")
    queue = forwarded[str]("job.queue", "The queue the job came from.")
    args = forwarded[list[Any]](
        "job.args", "The job's arguments as they travelled (JSON values, before conversion)."
    )
    custom = forwarded[dict[str, Any] | None](
        "job.custom", "The job's ``custom`` mapping, or None."
    )

    @property
    def bid(self) -> str | None:
        """The Faktory Enterprise batch this job belongs to (``custom.bid``), or None."""
        return _custom_str(self.job, "bid")

    @property
    def callback_bid(self) -> str | None:
        """When this job is a batch's success or complete callback, that batch
        (``custom._bid``, set by the server); else None."""
        return _custom_str(self.job, "_bid")

    @property
    def parent_bid(self) -> str | None:
        """When this job is a callback of a child batch, the parent batch
        (``custom._pbid``, as the Ruby client reads it); else None."""
        return _custom_str(self.job, "_pbid")

    @property
    def batch(self) -> Batch:
        """This job's batch, to add jobs to it from inside: ``.add(job)`` reopens it
        (``BATCH OPEN``), pushes the job with its bid and commits it again, as the Ruby
        client does; ``with current_job().batch:`` does the same around a block of
        ``.delay()`` calls (``async with`` and ``add_async`` from ``async def`` jobs).
        A job outside any batch raises :class:`~kaffi.errors.JobError`."""
        found: Batch | None = self.__dict__.get("_batch")
        if found is not None:
            return found
        bid = self.bid
        if bid is None:
            raise JobError(
                f"job {self.job.jid} ({self.job.jobtype}) is not part of a batch (it has no"
                " custom.bid), so current_job().batch has nothing to open"
            )
        from kaffi.app.batch import Batch

        # One Batch per job: inside `with current_job().batch:`, .add() is then one push.
        batch: Batch = self.__dict__.setdefault("_batch", Batch(self.app, bid=bid))
        return batch

    def track(
        self,
        percent: int | None = None,
        desc: str | None = None,
        *,
        reserve_until: datetime | timedelta | None = None,
    ) -> None:
        """Report this job's progress to Faktory Enterprise (``TRACK SET``, through
        ``app.client``): ``percent`` 0 to 100, ``desc`` a short text, and ``reserve_until``
        (a datetime, or a timedelta from now) to extend the job's reservation past its
        ``reserve_for``, so a long job is not handed out again. The job should be a
        ``track=True`` task for ``app.progress(jid)`` to report it. From an ``async def``
        job, use :meth:`track_async`. In a testing mode (inline, fake) nothing is sent:
        the reports are kept in :attr:`tracked`."""
        if self.app.delivery is not None:
            self.tracked.append(track_set_document(self.job.jid, percent, desc, reserve_until))
            return
        self.app.client.track_set(
            self.job.jid, percent=percent, desc=desc, reserve_until=reserve_until
        )

    async def track_async(
        self,
        percent: int | None = None,
        desc: str | None = None,
        *,
        reserve_until: datetime | timedelta | None = None,
    ) -> None:
        """:meth:`track` for ``async def`` jobs (through ``app.async_client``)."""
        if self.app.delivery is not None:
            self.tracked.append(track_set_document(self.job.jid, percent, desc, reserve_until))
            return
        await self.app.async_client.track_set(
            self.job.jid, percent=percent, desc=desc, reserve_until=reserve_until
        )

    @property
    def tracked(self) -> list[dict[str, Any]]:
        """The ``TRACK SET`` documents :meth:`track` kept while the App was in a testing
        mode, which has no server to send them to (oldest first)."""
        reports: list[dict[str, Any]] = self.__dict__.setdefault("_tracked", [])
        return reports

    def __repr__(self) -> str:
        return f"<JobContext jid={self.job.jid} jobtype={self.job.jobtype!r}>"


def _custom_str(job: JobPayload, key: str) -> str | None:
    custom = job.custom
    value = custom.get(key) if custom else None
    return value if isinstance(value, str) and value else None


def current_job() -> JobContext:
    """The context of the job running in this task or thread.

    Works inside a job function, its ContextProvider and worker middleware, in async jobs
    and in plain functions the worker runs in its threads alike.
    """
    try:
        return _current_job.get()
    except LookupError:
        raise JobError(
            "kaffi.current_job() was called outside a running job: it only works while a"
            " worker (or app.testing.inline()/fake()) is performing a job"
        ) from None


async def perform(
    app: App,
    job: JobPayload,
    *,
    run_sync: RunSync | None = None,
    ctx: JobContext | None = None,
    registry: Mapping[str, Task[Any, Any]] | None = None,
    middleware: Sequence[Middleware] = (),
) -> JobContext:
    """Run ``job`` through ``app``'s worker middleware and its task function.

    ``run_sync`` runs plain (blocking) callables off the event loop: the worker passes its
    thread pool; None calls plain task functions inline. ``registry`` (jobtype -> Task)
    is looked up before the App's tasks, and ``middleware`` runs inside the App's own:
    what a worker's ``registry=`` and ``middleware=`` add. The returned context is the
    one middleware saw. Exceptions (an unknown jobtype, bad arguments, the job's own, a
    middleware's) propagate unchanged.
    """
    task = registry.get(job.jobtype) if registry else None
    if task is None:
        task = app.tasks.get(job.jobtype)
    if ctx is None:
        ctx = JobContext(app, job, task)
    else:
        ctx.__dict__.update(job=job, task=task, fn=task.fn if task else None, performed=False)
    token = _current_job.set(ctx)
    # A job run inline inside a batch's block is no part of that block: as on a worker,
    # its pushes join a batch only through current_job().batch.
    bid_token = current_bid.set(None) if current_bid.get() is not None else None
    chain = [*app.middleware, *middleware] if middleware else app.middleware
    try:
        if chain:
            core = functools.partial(_core, app, ctx, task, registry=registry)
            await run_chain(chain, ctx, core, run_sync)
        else:
            await _core(app, ctx, task, run_sync, registry=registry)
    finally:
        _current_job.reset(token)
        if bid_token is not None:
            current_bid.reset(bid_token)
    return ctx


async def _core(
    app: App,
    ctx: JobContext,
    task: Task[Any, Any] | None,
    run_sync: RunSync | None,
    *,
    registry: Mapping[str, Task[Any, Any]] | None = None,
) -> None:
    ctx.__dict__["performed"] = True
    if task is None:
        known = ", ".join(sorted({*app.tasks, *(registry or ())})) or "none"
        raise UnknownJobType(
            f"no task is registered for jobtype {ctx.job.jobtype!r} (jid {ctx.job.jid});"
            f" registered jobtypes: {known}"
        )
    args, kwargs = task.decode_args(ctx.job.args)
    fn = task.fn
    if task.is_async:
        result = await fn(*args, **kwargs)
        if result is None:  # most jobs: nothing to check
            return
        if _is_provider(result):
            # A provider returned by an async job is cheap glue code: call it on the loop.
            result = result(ctx)
    elif run_sync is None:
        result = _call_plain(fn, args, kwargs, ctx)
    else:
        result = await run_sync(functools.partial(_call_plain, fn, args, kwargs, ctx))
    if result is not None and inspect.isawaitable(result):  # None: most jobs, checked fast
        await result


def _call_plain(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], ctx: JobContext
) -> Any:
    """Call a plain job function and, in the same thread, a plain ContextProvider it
    returns. An awaitable result (an async provider, or a function that wraps an async
    one) goes back to the caller to be awaited on the loop."""
    result = fn(*args, **kwargs)
    if result is None:  # most jobs: nothing to check
        return None
    if _is_provider(result):
        if is_async_callable(result):
            return result(ctx)
        result = result(ctx)
    if inspect.isawaitable(result):
        return result
    return None


def _is_provider(value: object) -> bool:
    # A class is callable but is a value a job may return, not a provider.
    return value is not None and callable(value) and not isinstance(value, type)
