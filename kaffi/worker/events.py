"""What only the worker loop knows, told to an observer: :class:`WorkerEvents`.

Everything about a job (its outcome, duration, queue) reaches middleware through
``app.use``. A few things happen outside any job: a FETCH that came back empty, the
worker's state (running, quiet, terminate, stopped), whether the server can be reached.
The worker tells them to the ``events`` object it was given (``Worker(events=...)``), a
:class:`WorkerEvents`: the base class does nothing, so an observer overrides only what
it needs. Metrics (:mod:`kaffi.contrib.prometheus`) are the first such observer.

The worker calls these methods on its event loop, on its hot path (``fetch_empty`` after
every empty FETCH): they must be quick and must not block. An observer that raises is
logged and otherwise ignored: it never takes the worker down (:func:`notify`).

This module imports nothing from the worker; the worker imports it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kaffi.worker.worker import Worker

__all__ = ["WorkerEvents", "notify"]

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


def notify(events: WorkerEvents, method: str, *args: Any) -> None:
    """Call ``events.<method>(*args)``; an exception is logged, never raised: an observer
    that fails must not take the worker down."""
    try:
        getattr(events, method)(*args)
    except Exception:
        log.exception("worker events observer %r failed in %s", events, method)
