"""Optional integrations, each behind its own extra, which the core never imports.

- :mod:`kaffi.contrib.django` (``kaffi[django]``): a Django app: settings, one App per
  project with task discovery, ``manage.py kaffi_worker``, database connections handled
  around each job, ``task.delay_on_commit()`` and model instances refused as arguments.
- :mod:`kaffi.contrib.asgi` (``kaffi[asgi]``): Starlette and FastAPI: a lifespan that opens
  and closes the App's AsyncClient, and dependencies handing it to endpoints.
- :mod:`kaffi.contrib.prometheus` (``kaffi[prometheus]``): worker and producer metrics,
  the ``/metrics`` server of ``kaffi worker --metrics``, multiprocess aggregation;
- :mod:`kaffi.contrib.exporter` (``kaffi[prometheus]``): the queue and server metrics of
  ``kaffi exporter``;
- :mod:`kaffi.contrib.otel` (``kaffi[otel]``): OpenTelemetry spans across push and worker;
- :mod:`kaffi.contrib.addresses`: the ``HOST:PORT`` rule the metrics servers share (no extra).

Where they sit: above ``worker`` and ``app``, beside ``cli``. They reach kaffi only
through its public extension points (worker and push middleware, the worker's
:class:`~kaffi.worker.events.WorkerEvents`, :data:`kaffi.worker.joblog.job_log_fields`,
the hooks of :mod:`kaffi.app.task` and :mod:`kaffi.app.signature`), so they know nothing
of the worker's internals. ``import kaffi`` never imports this package. The core imports
it only on request and inside a function: ``App(tracing=True)`` and the command line's
``--metrics`` and ``kaffi exporter``. Each module here imports its framework or library,
which is only installed with the extra; where a missing extra is a configuration mistake
(metrics, tracing), :func:`require` raises :class:`~kaffi.errors.ConfigurationError`
saying what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kaffi.errors import ConfigurationError

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` (a third-party package an integration needs) or raise
    ConfigurationError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name
        if missing is None or not (module == missing or module.startswith(missing + ".")):
            raise  # the package is there but something it imports is not: show that
        raise ConfigurationError(
            f"{module} is not installed: install kaffi[{extra}] (pip install 'kaffi[{extra}]')"
        ) from None
