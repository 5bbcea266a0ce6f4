"""``app.testing.inline()`` and ``app.testing.fake()``: run or collect jobs without a server.

Inline mode runs each pushed job at once, in this process. The payload makes a JSON
round trip first and the job goes through :func:`kaffi.app.execution.perform`, exactly
what a worker calls, so the test sees the worker middleware, the arguments converted back
to their annotated types and the ContextProvider. An exception in the job propagates to
the code that called ``.delay()``.

Fake mode keeps the pushed payloads in memory for assertions (:class:`FakeJobs`) and runs
them on demand with ``jobs.run_all()``, again through ``perform``.

Both modes act on one App, for every thread, until the ``with`` block ends (or for the
App's life when it was built with ``App(testing="inline")`` / ``"fake"``).

These are a feature of the App (``app.testing``), so they live in :mod:`kaffi.app`;
:mod:`kaffi.testing.modes` gives them their documented import path. This module must not
import :mod:`kaffi.testing`, :mod:`kaffi.worker` or :mod:`kaffi.cli`.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, overload

from kaffi.app.execution import perform
from kaffi.app.middleware import RunSync, run_serving_blocking_calls
from kaffi.errors import ConfigurationError, JobError
from kaffi.protocol.batches import BatchDefinition
from kaffi.protocol.models import JobPayload, RejectedJob, dumps

if TYPE_CHECKING:
    from kaffi.app.app import App
    from kaffi.app.push import Delivery
    from kaffi.app.task import Task

__all__ = ["FakeJobs", "InlineDelivery", "RecordedBatch", "Testing"]

#: ``run_all`` stops after this many jobs: a job that keeps pushing itself would loop forever.
MAX_RUN_ALL = 100_000


def _round_trip(payload: dict[str, Any]) -> JobPayload:
    """The job as a worker would fetch it: through JSON, with the server's timestamps."""
    job = JobPayload.from_wire(dumps(payload))
    now = datetime.now(timezone.utc)
    job.created_at = job.created_at or now
    job.enqueued_at = now
    return job


class InlineDelivery:
    """Runs every pushed job at once through ``perform``."""

    def __init__(self, app: App) -> None:
        self.app = app

    def push(self, payload: dict[str, Any]) -> str:
        """Run the job now, after a JSON round trip; return its jid (its exception propagates)."""
        job = _round_trip(payload)
        # Plain job functions run here, in the caller's thread with no loop running in
        # it, as in a worker's job thread (see run_serving_blocking_calls).
        run_serving_blocking_calls(lambda run_sync: perform(self.app, job, run_sync=run_sync))
        return job.jid

    async def push_async(self, payload: dict[str, Any]) -> str:
        """:meth:`push` on the running event loop."""
        job = _round_trip(payload)
        await perform(self.app, job)
        return job.jid

    def push_bulk(self, payloads: Sequence[dict[str, Any]]) -> list[RejectedJob]:
        """Run every job now, in order; none is ever refused."""
        for payload in payloads:
            self.push(payload)
        return []

    async def push_bulk_async(self, payloads: Sequence[dict[str, Any]]) -> list[RejectedJob]:
        """:meth:`push_bulk` on the running event loop."""
        for payload in payloads:
            await self.push_async(payload)
        return []


class FakeJobs(Sequence[JobPayload]):
    """The jobs pushed while fake mode is active, oldest first, as a worker would fetch
    them. ``run_all()`` runs (and removes) them, including jobs they push in turn."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._jobs: list[JobPayload] = []
        self._lock = threading.Lock()

    # -- Delivery --------------------------------------------------------------------------

    def push(self, payload: dict[str, Any]) -> str:
        """Keep the job (after a JSON round trip); return its jid."""
        job = _round_trip(payload)
        with self._lock:
            self._jobs.append(job)
        return job.jid

    async def push_async(self, payload: dict[str, Any]) -> str:
        """:meth:`push` for asyncio code."""
        return self.push(payload)

    def push_bulk(self, payloads: Sequence[dict[str, Any]]) -> list[RejectedJob]:
        """Keep every job; none is ever refused."""
        jobs = [_round_trip(p) for p in payloads]
        with self._lock:
            self._jobs.extend(jobs)
        return []

    async def push_bulk_async(self, payloads: Sequence[dict[str, Any]]) -> list[RejectedJob]:
        """:meth:`push_bulk` for asyncio code."""
        return self.push_bulk(payloads)

    # -- inspecting ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs)

    @overload
    def __getitem__(self, index: int) -> JobPayload: ...

    @overload
    def __getitem__(self, index: slice) -> list[JobPayload]: ...

    def __getitem__(self, index: int | slice) -> JobPayload | list[JobPayload]:
        with self._lock:
            return self._jobs[index]

    def __iter__(self) -> Iterator[JobPayload]:
        with self._lock:
            snapshot = list(self._jobs)
        return iter(snapshot)

    @property
    def jids(self) -> list[str]:
        """The jids of the collected jobs, oldest first."""
        return [job.jid for job in self]

    def of_type(self, jobtype: str | Task[Any, Any]) -> list[JobPayload]:
        """The collected jobs of one jobtype (a name or a Task)."""
        name = jobtype if isinstance(jobtype, str) else jobtype.name
        return [job for job in self if job.jobtype == name]

    def clear(self) -> None:
        """Forget every collected job without running it."""
        with self._lock:
            self._jobs.clear()

    # -- running ---------------------------------------------------------------------------

    def _pop(self) -> JobPayload | None:
        with self._lock:
            return self._jobs.pop(0) if self._jobs else None

    async def run_all_async(self) -> int:
        """Run every collected job, oldest first, through ``perform``; jobs pushed while
        running are run too. Returns how many ran. A job's exception propagates (that
        job is gone, the rest stay collected)."""
        return await self._run_all(None)

    async def _run_all(self, run_sync: RunSync | None) -> int:
        count = 0
        while (job := self._pop()) is not None:
            if count >= MAX_RUN_ALL:
                with self._lock:
                    self._jobs.insert(0, job)
                raise JobError(
                    f"run_all ran {MAX_RUN_ALL} jobs and more keep coming: does a job push"
                    " itself without end?"
                )
            count += 1
            await perform(self.app, job, run_sync=run_sync)
        return count

    def run_all(self) -> int:
        """:meth:`run_all_async` from synchronous code (plain job functions run in this
        thread, with no event loop running in it, as in a worker's job thread)."""
        return run_serving_blocking_calls(self._run_all)

    def __repr__(self) -> str:
        return f"<FakeJobs {len(self)} job{'' if len(self) == 1 else 's'}>"


@dataclass
class RecordedBatch:
    """A Faktory Enterprise batch that ``app.batch(...)`` (or ``Batch.open``,
    ``current_job().batch``) used while a testing mode was active, with no server: its
    minted ``bid``, its ``definition`` (None for a batch only opened by its bid), and how
    many times a block ``opened`` and ``committed`` it. Its jobs carry ``custom.bid``
    as usual; its callbacks are not run."""

    bid: str
    definition: BatchDefinition | None
    opened: int = 0
    committed: int = 0


class Testing:
    """``app.testing``: switch an App into a testing mode."""

    def __init__(self, app: App) -> None:
        self._app = app
        #: bid -> the batches used in a testing mode, in the order they were first used.
        self.batches: dict[str, RecordedBatch] = {}
        self._batch_lock = threading.Lock()

    def begin_batch(self, bid: str | None, definition: BatchDefinition | None) -> str:
        """What entering a batch's block does in a testing mode: a new batch gets a
        minted bid (``b-`` and 14 URL-safe characters, as Enterprise makes them); an
        existing one (by bid) is recorded as opened. Returns the bid."""
        with self._batch_lock:
            if bid is None:
                bid = "b-" + secrets.token_urlsafe(11)[:14]
            record = self.batches.get(bid)
            if record is None:
                record = self.batches[bid] = RecordedBatch(bid, definition)
            record.opened += 1
            return bid

    def commit_batch(self, bid: str) -> None:
        """What committing a batch does in a testing mode: counts it in its record."""
        with self._batch_lock:
            record = self.batches.get(bid)
            if record is None:
                record = self.batches[bid] = RecordedBatch(bid, None)
            record.committed += 1

    @property
    def mode(self) -> Literal["inline", "fake"] | None:
        """``"inline"``, ``"fake"`` or None: the testing mode the App is in now."""
        delivery = self._app.delivery
        if isinstance(delivery, InlineDelivery):
            return "inline"
        if isinstance(delivery, FakeJobs):
            return "fake"
        return None

    @property
    def jobs(self) -> FakeJobs:
        """The collected jobs while fake mode is active."""
        delivery = self._app.delivery
        if not isinstance(delivery, FakeJobs):
            raise ConfigurationError(
                "app.testing.jobs is only there in fake mode: use"
                " `with app.testing.fake() as jobs:` or App(testing='fake')"
            )
        return delivery

    def enable(self, mode: Literal["inline", "fake"]) -> None:
        """Put the App in ``mode`` for good (``App(testing=...)`` calls this)."""
        self._app.delivery = self._make(mode)

    def _make(self, mode: str) -> Delivery:
        if mode == "inline":
            return InlineDelivery(self._app)
        if mode == "fake":
            return FakeJobs(self._app)
        raise ConfigurationError(f"testing mode must be 'inline' or 'fake', got {mode!r}")

    @contextmanager
    def inline(self) -> Iterator[None]:
        """Inside the block, ``.delay()`` runs the job at once (see the module docs)."""
        previous = self._app.delivery
        self._app.delivery = InlineDelivery(self._app)
        try:
            yield
        finally:
            self._app.delivery = previous

    @contextmanager
    def fake(self) -> Iterator[FakeJobs]:
        """Inside the block, pushed jobs are collected in the yielded :class:`FakeJobs`."""
        previous = self._app.delivery
        jobs = FakeJobs(self._app)
        self._app.delivery = jobs
        try:
            yield jobs
        finally:
            self._app.delivery = previous
