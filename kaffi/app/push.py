"""Sending jobs: the push middleware chain and where a payload goes.

A task turns a call into a payload (a JSON-compatible dict, already validated); this
module runs it through the app's push middleware (``app.use_push``) and hands it to the
delivery: the network client, or a testing mode (inline or fake) when one is active.
The client gets each job already checked, as an
:class:`~kaffi.protocol.models.EncodedJob` (or the middleware's JobPayload), so it is
validated and encoded once per push, never again by the client.

Push middleware see a :class:`PushContext` whose ``job`` is the
:class:`~kaffi.protocol.models.JobPayload` about to be sent; they may change it (stamp a
trace id into ``custom``, say) or not call ``next`` to drop the job. A dropped job is
never sent, and the caller can tell: a single push returns None instead of a jid, and a
bulk push counts it in :attr:`BulkOutcome.dropped`, apart from the jobs the server
rejected. The payload model is
only built when there is push middleware, so the plain ``.delay()`` path stays lean; with
neither middleware nor a testing mode, :func:`deliver_call` has the task encode the job
straight to bytes (:meth:`~kaffi.app.task.Task.encoded_job`), with no dict in between.

Inside a Faktory Enterprise batch's block (``with app.batch(...)``), every payload is
stamped with the batch's ``custom.bid`` here, before the push middleware see it, so the
middleware, the testing modes and the server all see the job as a member of the batch
(see :mod:`kaffi.protocol.batches`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from kaffi.app.middleware import RunSync, run_chain, run_chain_blocking
from kaffi.errors import ValidationError
from kaffi.protocol.batches import current_bid, join_current
from kaffi.protocol.models import EncodedJob, JobPayload, RejectedJob

if TYPE_CHECKING:
    from kaffi.app.app import App
    from kaffi.app.task import Task

__all__ = [
    "BULK_CHUNK",
    "BulkOutcome",
    "Delivery",
    "PushContext",
    "collect",
    "collect_async",
    "deliver",
    "deliver_async",
    "deliver_call",
    "deliver_call_async",
    "deliver_many",
    "deliver_many_async",
]


class Delivery(Protocol):
    """Where payloads go instead of the network (the testing modes implement this)."""

    def push(self, payload: dict[str, Any]) -> str:
        """Take one payload; return its jid."""

    def push_async(self, payload: dict[str, Any]) -> Awaitable[str]:
        """:meth:`push` for asyncio code."""

    def push_bulk(self, payloads: Sequence[dict[str, Any]]) -> list[RejectedJob]:
        """Take many payloads; return the ones refused."""

    def push_bulk_async(self, payloads: Sequence[dict[str, Any]]) -> Awaitable[list[RejectedJob]]:
        """:meth:`push_bulk` for asyncio code."""


class PushContext:
    """What push middleware get: ``job`` (the JobPayload to send), ``task`` (the Task, or
    None for a job pushed without one), ``app``, and any attribute a middleware sets."""

    job: JobPayload
    task: Task[Any, Any] | None
    app: App
    #: Set once the job was handed over: the jid the delivery answered with.
    jid: str | None

    def __init__(self, app: App, job: JobPayload, task: Task[Any, Any] | None = None) -> None:
        self.__dict__.update(app=app, job=job, task=task, jid=None)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"PushContext has no attribute {name!r}; a push middleware must set it first"
        )

    def __repr__(self) -> str:
        return f"<PushContext jid={self.job.jid} jobtype={self.job.jobtype!r}>"


class BulkOutcome(list[RejectedJob]):
    """What ``delay_many`` returns: the jobs the server rejected (the list itself, as
    before) and ``dropped``, how many jobs a push middleware dropped (never sent)."""

    def __init__(self, rejected: Iterable[RejectedJob] = (), dropped: int = 0) -> None:
        super().__init__(rejected)
        #: Jobs a push middleware did not pass on (it did not call ``next``).
        self.dropped = dropped

    def __repr__(self) -> str:
        return f"BulkOutcome(rejected={list(self)!r}, dropped={self.dropped})"


def _payload_model(payload: dict[str, Any]) -> JobPayload:
    # Validated already (task options at declaration, args at the call), so no second check;
    # the model still validates assignments a middleware makes.
    return JobPayload.model_validate(payload)


def deliver_call(
    task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str | None:
    """Push one call of ``task`` synchronously (``.delay()``); returns the jid, or None
    when a push middleware dropped the job."""
    app = task.app
    if app.push_middleware or app.delivery is not None or current_bid.get() is not None:
        return deliver(app, task.payload(args, kwargs), task)
    return app.client.push(task.encoded_job(args, kwargs))


async def deliver_call_async(
    task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> str | None:
    """:func:`deliver_call` from asyncio (``.delay_async()``)."""
    app = task.app
    if app.push_middleware or app.delivery is not None or current_bid.get() is not None:
        return await deliver_async(app, task.payload(args, kwargs), task)
    return await app.async_client.push(task.encoded_job(args, kwargs))


def deliver(app: App, payload: dict[str, Any], task: Task[Any, Any] | None = None) -> str | None:
    """Send one payload synchronously, through the push middleware; returns the jid, or
    None when a middleware dropped it (did not call ``next``). Inside a batch's block it
    joins the batch."""
    payload = join_current(payload)
    if not app.push_middleware:
        return _send(app, payload)
    ctx = PushContext(app, _payload_model(payload), task)

    def core() -> None:
        delivery = app.delivery
        if delivery is not None:
            ctx.jid = delivery.push(ctx.job.to_wire())
        else:
            # The model validated every assignment a middleware made: send it as it is.
            ctx.jid = app.client.push(ctx.job)

    run_chain_blocking(app.push_middleware, ctx, core)
    # Only the core sets ctx.jid: None means no middleware passed the job on.
    return ctx.jid


def _send(app: App, payload: dict[str, Any]) -> str:
    delivery = app.delivery
    if delivery is not None:
        return delivery.push(payload)
    return app.client.push(EncodedJob.from_checked(payload))


async def deliver_async(
    app: App, payload: dict[str, Any], task: Task[Any, Any] | None = None
) -> str | None:
    """Send one payload from asyncio, through the push middleware; returns the jid, or
    None when a middleware dropped it."""
    payload = join_current(payload)
    if not app.push_middleware:
        return await _send_async(app, payload)
    ctx = PushContext(app, _payload_model(payload), task)

    async def core(run_sync: RunSync | None) -> None:
        delivery = app.delivery
        if delivery is not None:
            ctx.jid = await delivery.push_async(ctx.job.to_wire())
        else:
            ctx.jid = await app.async_client.push(ctx.job)

    await run_chain(app.push_middleware, ctx, core)
    return ctx.jid


async def _send_async(app: App, payload: dict[str, Any]) -> str:
    delivery = app.delivery
    if delivery is not None:
        return await delivery.push_async(payload)
    return await app.async_client.push(EncodedJob.from_checked(payload))


def collect(
    app: App,
    payloads: Iterable[dict[str, Any]],
    task: Task[Any, Any] | None = None,
    outcome: BulkOutcome | None = None,
) -> Iterator[dict[str, Any]]:
    """Run each payload through the push middleware as it is taken, yielding those to
    send and counting the dropped ones in ``outcome.dropped``. For bulk pushes the
    chain's core only collects: a chunk's PUSHB happens after the chains of its jobs
    returned. Inside a batch's block each joins the batch (before the middleware; without
    middleware, :func:`deliver_many` stamps them)."""
    if not app.push_middleware:
        yield from payloads
        return
    for payload in payloads:
        ctx = PushContext(app, _payload_model(join_current(payload)), task)
        kept: list[dict[str, Any]] = []

        def core(ctx: PushContext = ctx, kept: list[dict[str, Any]] = kept) -> None:
            kept.append(ctx.job.to_wire())
            ctx.jid = ctx.job.jid

        run_chain_blocking(app.push_middleware, ctx, core)
        if not kept and outcome is not None:
            outcome.dropped += 1
        yield from kept


async def collect_async(
    app: App,
    payloads: Iterable[dict[str, Any]],
    task: Task[Any, Any] | None = None,
    outcome: BulkOutcome | None = None,
) -> list[dict[str, Any]]:
    """:func:`collect` from asyncio (async middleware are awaited, so this one collects
    every payload before returning)."""
    if not app.push_middleware:
        return list(payloads)
    kept: list[dict[str, Any]] = []
    for payload in payloads:
        ctx = PushContext(app, _payload_model(join_current(payload)), task)

        async def core(run_sync: RunSync | None, ctx: PushContext = ctx) -> None:
            kept.append(ctx.job.to_wire())
            ctx.jid = ctx.job.jid

        await run_chain(app.push_middleware, ctx, core)
        if ctx.jid is None and outcome is not None:
            outcome.dropped += 1
    return kept


def deliver_many(app: App, payloads: Iterable[dict[str, Any]]) -> list[RejectedJob]:
    """Send payloads with PUSHB, in chunks of :data:`BULK_CHUNK`; returns the rejected.

    ``payloads`` is consumed a chunk at a time, each chunk sent before the next is taken,
    so a ValidationError it raises (a bad item) leaves the earlier chunks sent: the error
    then says which. The client gets them all in one ``push_bulk`` call, so it can build
    one chunk while the server stores the one before. Inside a batch's block each joins
    the batch (a payload stamped already, by :func:`collect`, is left as it is).
    """
    if current_bid.get() is not None:
        payloads = map(join_current, payloads)
    delivery = app.delivery
    if delivery is None:
        return app.client.push_bulk(map(EncodedJob.from_checked, payloads))
    rejected: list[RejectedJob] = []
    for chunk in _chunks(payloads):
        rejected.extend(delivery.push_bulk(chunk))
    return rejected


async def deliver_many_async(app: App, payloads: Iterable[dict[str, Any]]) -> list[RejectedJob]:
    """:func:`deliver_many` from asyncio."""
    if current_bid.get() is not None:
        payloads = map(join_current, payloads)
    delivery = app.delivery
    if delivery is None:
        return await app.async_client.push_bulk(map(EncodedJob.from_checked, payloads))
    rejected: list[RejectedJob] = []
    for chunk in _chunks(payloads):
        rejected.extend(await delivery.push_bulk_async(chunk))
    return rejected


def _chunks(payloads: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    # The testing modes' twin of the client's chunking, with the same error wording. The
    # caller delivers each chunk before asking for the next, so every chunk handed out
    # before a bad item was sent.
    handed_out = 0
    chunk: list[dict[str, Any]] = []
    try:
        for payload in payloads:
            chunk.append(payload)
            if len(chunk) == BULK_CHUNK:
                handed_out += len(chunk)
                yield chunk
                chunk = []
    except ValidationError as exc:
        if not handed_out:
            raise ValidationError(f"{exc}; nothing was sent", field=exc.field) from None
        raise ValidationError(
            f"{exc}; jobs 0 to {handed_out - 1} were already pushed, "
            f"nothing from job {handed_out} on",
            field=exc.field,
        ) from None
    if chunk:
        yield chunk


#: Jobs per PUSHB command: large enough to amortise round trips, small enough that one
#: command stays well under the server's line limit for typical payloads.
BULK_CHUNK = 1000
