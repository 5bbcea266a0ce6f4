"""The worker: run an App's tasks from Faktory queues.

- :mod:`kaffi.worker.worker`: :class:`Worker`, the manager: options, public API, ``run()``;
- :mod:`kaffi.worker.processor`: the slots: FETCH, run, ACK/FAIL with the next FETCH;
- :mod:`kaffi.worker.lifecycle`: running/quiet/terminate/stopped and the heartbeat;
- :mod:`kaffi.worker.connections`: connections within ``pool_size``, start-up, outages;
- :mod:`kaffi.worker.shutdown`: the shutdown order;
- :mod:`kaffi.worker.backoff`: full-jitter backoff and the idle FETCH's spread;
- :mod:`kaffi.worker.options`: the options, checked by a pydantic model;
- :mod:`kaffi.worker.supervisor`: ``--processes N``, a supervisor and N worker processes;
- :mod:`kaffi.worker.signals`: TERM/INT/TSTP/TTIN;
- :mod:`kaffi.worker.joblog`: per-job log context, text and JSON log lines;
- :mod:`kaffi.worker.threads`: the threads that run plain (blocking) job functions;
- :mod:`kaffi.worker.queues`: strict and weighted queue order;
- :mod:`kaffi.worker.loader`: finding the App from ``module:attribute``.

The worker builds on :mod:`kaffi.app` (``perform``) and :mod:`kaffi.client` (connections);
nothing below it imports it. Importing this package registers :class:`Worker` as what
``app.worker()`` builds (:func:`kaffi.app.workers.register_worker_factory`).
"""

from kaffi.app.workers import register_worker_factory
from kaffi.worker.worker import Worker

register_worker_factory(Worker)

__all__ = ["Worker"]
