"""The worker: run an App's tasks from Faktory queues.

- :mod:`kaffi.worker.worker`: :class:`Worker` (fetch loop, ACK/FAIL, heartbeat, the
  shutdown order);
- :mod:`kaffi.worker.supervisor`: ``--processes N``, a supervisor and N worker processes;
- :mod:`kaffi.worker.signals`: TERM/INT/TSTP/TTIN;
- :mod:`kaffi.worker.logging`: per-job log context, text and JSON log lines;
- :mod:`kaffi.worker.threads`: the threads that run plain (blocking) job functions;
- :mod:`kaffi.worker.queues`: strict and weighted queue order;
- :mod:`kaffi.worker.loader`: finding the App from ``module:attribute``.

The worker builds on :mod:`kaffi.app` (``perform``) and :mod:`kaffi.client` (connections);
nothing below it imports it.
"""

from kaffi.worker.worker import Worker

__all__ = ["Worker"]
