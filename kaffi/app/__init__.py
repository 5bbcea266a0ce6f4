"""Apps and tasks: ``App``, ``@app.task``, ``Task``, and the Node client's module API.

For users coming from the Node client (``faktory-worker``), ``kaffi.use(fn)``,
``kaffi.register(name, fn)``, ``kaffi.connect(**options)``, ``kaffi.work(**options)`` and
``kaffi.stop()`` act on one default App, created on first use::

    import kaffi

    kaffi.register("add", lambda a, b: print(a + b)).use(log_jobs)
    kaffi.work(queues=["default"])
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kaffi.app.app import App, Mutate
from kaffi.app.execution import JobContext, current_job, perform
from kaffi.app.middleware import Middleware
from kaffi.app.push import PushContext
from kaffi.app.task import Task
from kaffi.app.workers import WorkerHandle

if TYPE_CHECKING:
    from kaffi.client import Client

__all__ = [
    "App",
    "JobContext",
    "Middleware",
    "Mutate",
    "PushContext",
    "Task",
    "connect",
    "current_job",
    "default_app",
    "perform",
    "register",
    "stop",
    "use",
    "work",
]

_lock = threading.Lock()
_default_app: App | None = None
_running: WorkerHandle | None = None


def default_app() -> App:
    """The App the module-level functions act on (created on first use)."""
    global _default_app
    with _lock:
        if _default_app is None:
            _default_app = App()
        return _default_app


def use(middleware: Middleware) -> App:
    """Add a worker middleware to the default App; returns it for chaining."""
    return default_app().use(middleware)


def register(name: str, fn: Callable[..., Any]) -> App:
    """Register ``fn`` as jobtype ``name`` on the default App; returns it for chaining."""
    return default_app().register(name, fn)


def connect(url: str | None = None, **options: Any) -> Client:
    """A new :class:`~kaffi.client.Client` that has proved the server is reachable
    (``url``/options as for ``Client``; else the environment)."""
    from kaffi.client import Client

    client = Client(url, **options)
    try:
        client.connect()
    except BaseException:
        client.close()
        raise
    return client


def work(**options: Any) -> WorkerHandle:
    """Run a worker for the default App until it is stopped (``kaffi.stop()``, a signal,
    or ``burst=True`` running dry); returns the stopped Worker."""
    global _running
    worker = default_app().worker(**options)
    with _lock:
        _running = worker
    try:
        worker.work()
    finally:
        with _lock:
            if _running is worker:
                _running = None
    return worker


def stop() -> None:
    """Stop the worker :func:`work` is running (from another thread); returns once it
    has stopped. Does nothing when no worker is running."""
    with _lock:
        worker = _running
    if worker is not None:
        worker.stop()
