"""What only the worker loop knows, told to an observer: :class:`WorkerEvents`.

Middleware (``app.use``) can change what a job does; an observer only needs to know
what happened. The worker tells the ``events`` object it was given
(``Worker(events=...)``), a :class:`WorkerEvents`, about each job (started, finished
with its duration and outcome) and about what happens outside any job: a FETCH that came
back empty, the worker's state (running, quiet, terminate, stopped), whether the server
can be reached. The base class does nothing, so an observer overrides only what it
needs; the job methods are only called when overridden. Metrics
(:mod:`kaffi.contrib.prometheus`) are the first such observer: counting a job this way
costs it a method call, where a middleware costs a coroutine and a step of the chain.

The worker calls these methods on its event loop, on its hot path (the job methods for
every job, ``fetch_empty`` after every empty FETCH): they must be quick and must not
block. An observer that raises is logged and otherwise ignored: it never takes the
worker down (:func:`notify`).

This module imports nothing from the worker; the worker imports it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kaffi.protocol.models import JobPayload
    from kaffi.worker.worker import Worker

__all__ = ["JOB_OUTCOMES", "WorkerEvents", "notify", "observes_jobs"]

#: What :meth:`WorkerEvents.job_finished` says about a job: it ran and returned (the
#: worker ACKs it), it raised (FAILed), or a middleware did not call ``next`` (ACKed).
JOB_OUTCOMES = ("ok", "failed", "dropped")

log = logging.getLogger("kaffi.worker")


class WorkerEvents:
    """An observer of one worker's life. Every method does nothing here: subclass and
    override what you need, then pass an instance as ``Worker(events=...)``."""

    def started(self, worker: Worker) -> None:
        """The worker reached its server and is about to start its slots: no job has run
        yet. An observer may add middleware to ``worker.app`` here; the state is running
        and the server reachable from now until told otherwise."""

    def state_changed(self, worker: Worker, state: str) -> None:
        """The worker's state moved forward to ``state``: ``"quiet"``, ``"terminate"`` or
        ``"stopped"`` (``"running"`` is implied by :meth:`started`)."""

    def server_reachable(self, worker: Worker, reachable: bool) -> None:
        """A connection to the server was opened (True) or could not be (False)."""

    def fetch_empty(self, worker: Worker) -> None:
        """A FETCH came back without a job (the server waited about 2 s for one)."""

    def job_started(self, worker: Worker, job: JobPayload) -> None:
        """A fetched job is about to go through the middleware chain."""

    def job_finished(self, worker: Worker, job: JobPayload, duration: float, outcome: str) -> None:
        """The job of the last :meth:`job_started` with this ``job`` is done: ``duration``
        seconds in the chain and the job, ``outcome`` one of :data:`JOB_OUTCOMES`."""


def observes_jobs(events: WorkerEvents) -> bool:
    """True when ``events`` overrides the job methods: the worker calls them only then."""
    cls = type(events)
    return (
        cls.job_started is not WorkerEvents.job_started
        or cls.job_finished is not WorkerEvents.job_finished
    )


def notify(events: WorkerEvents, method: str, *args: Any) -> None:
    """Call ``events.<method>(*args)``; an exception is logged, never raised: an observer
    that fails must not take the worker down."""
    try:
        getattr(events, method)(*args)
    except Exception:
        log.exception("worker events observer %r failed in %s", events, method)
