"""How an App hands out workers without importing the worker package.

The layers read top-down (``cli -> worker/testing -> app -> client/server -> protocol ->
errors``): :mod:`kaffi.worker` builds on :mod:`kaffi.app`, never the reverse. Yet
``app.worker(**options)`` must give back a worker. So the worker package registers its
class here when it is imported (:func:`register_worker_factory`, called at the end of
``kaffi/worker/__init__.py``), and ``app.worker()`` builds through whatever is registered.
When nothing is registered yet, :data:`DEFAULT_WORKER_MODULE` is imported by name, once,
which registers :class:`kaffi.worker.Worker`: the App depends on a registration, and a
host may register another factory (a ``Worker`` subclass, say) before any App builds one.

:class:`WorkerHandle` is what ``app.worker()`` promises, typed without the worker
package: the public surface of :class:`kaffi.worker.Worker`.

This module must not import :mod:`kaffi.worker`, :mod:`kaffi.testing` or :mod:`kaffi.cli`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from kaffi.errors import ConfigurationError

if TYPE_CHECKING:
    from kaffi.app.app import App
    from kaffi.app.middleware import Middleware
    from kaffi.client.config import ConnectionSettings

__all__ = [
    "DEFAULT_WORKER_MODULE",
    "build_worker",
    "WorkerFactory",
    "WorkerHandle",
    "register_worker_factory",
    "worker_factory",
]

#: The module that registers the worker when imported.
DEFAULT_WORKER_MODULE = "kaffi.worker"


class WorkerHandle(Protocol):
    """The worker ``app.worker()`` returns (:class:`kaffi.worker.Worker`), as the App and
    its users see it."""

    wid: str
    concurrency: int
    pool_size: int
    timeout: float
    beat_interval: float
    labels: tuple[str, ...]
    hostname: str
    burst: bool
    ready: threading.Event

    @property
    def state(self) -> str:
        """``running``, ``quiet``, ``terminate`` or ``stopped``."""

    @property
    def processed(self) -> int:
        """Jobs finished since start."""

    @property
    def failed(self) -> int:
        """Jobs FAILed since start."""

    @property
    def running_jobs(self) -> int:
        """Jobs running now."""

    @property
    def settings(self) -> ConnectionSettings:
        """Where the server is."""

    @property
    def abandoned_threads(self) -> bool:
        """True after a shutdown that left job threads running."""

    def use(self, middleware: Middleware) -> WorkerHandle:
        """Add a worker middleware (to the App)."""

    def register(self, name: str, fn: Callable[..., Any]) -> WorkerHandle:
        """Register a jobtype (on the App)."""

    def work(self) -> None:
        """Run until stopped."""

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run in the current event loop until stopped."""

    def quiet(self) -> None:
        """Stop fetching; finish what is held."""

    def stop(self, timeout: float | None = None) -> None:
        """Shut down and wait until stopped."""

    async def stop_async(self) -> None:
        """Shut down and wait until stopped, from any event loop."""

    def beat(self) -> str:
        """Send one heartbeat now."""

    async def beat_async(self) -> str:
        """Send one heartbeat now, on the worker's loop."""


#: ``factory(app, **options)`` builds a worker for ``app``.
WorkerFactory = Callable[..., WorkerHandle]

_lock = threading.Lock()
_factory: list[WorkerFactory] = []


def register_worker_factory(factory: WorkerFactory) -> None:
    """Make ``factory(app, **options)`` what ``app.worker(**options)`` calls (the last
    registration wins)."""
    if not callable(factory):
        raise ConfigurationError(f"a worker factory must be callable, got {factory!r}")
    with _lock:
        _factory[:] = [factory]


def worker_factory() -> WorkerFactory:
    """The registered factory, importing :data:`DEFAULT_WORKER_MODULE` first when none
    is registered yet."""
    if not _factory:
        importlib.import_module(DEFAULT_WORKER_MODULE)
        if not _factory:
            raise ConfigurationError(
                f"importing {DEFAULT_WORKER_MODULE} registered no worker factory"
            )
    return _factory[0]


def build_worker(app: App, options: dict[str, Any]) -> WorkerHandle:
    """``app.worker(**options)``: a worker for ``app`` from the registered factory."""
    return worker_factory()(app, **options)
