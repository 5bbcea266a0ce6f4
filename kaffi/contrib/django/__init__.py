"""kaffi in a Django project: add ``"kaffi.contrib.django"`` to ``INSTALLED_APPS``.

- Settings live in ``KAFFI = {...}`` (see :mod:`kaffi.contrib.django.conf`).
- ``from kaffi.contrib.django import app`` is the project's one :class:`~kaffi.App`,
  built from the settings on first use; declare tasks on it in each app's ``tasks.py``
  (``@app.task``), which Django loads at start-up in every process (as Celery's
  ``autodiscover_tasks`` does).
- ``python manage.py kaffi_worker [options]`` runs the worker, Django set up in each
  process (``--processes N`` included).
- Around each job the worker closes connections the database dropped or that are past
  ``CONN_MAX_AGE`` (:mod:`kaffi.contrib.django.db`), ``task.delay_on_commit(...)`` pushes
  once the transaction commits, and model instances are refused as arguments.

Importing this package imports nothing from Django; using ``app`` reads the settings.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kaffi.app import App

    #: The project's App (built from ``settings.KAFFI`` on first use).
    app: App

__all__ = ["app", "get_app"]

_app: App | None = None
_lock = threading.Lock()


def get_app() -> App:
    """The project's App, built from ``settings.KAFFI`` the first time it is asked for
    (``kaffi.contrib.django.app`` is the same object)."""
    global _app
    current = _app
    if current is None:
        from kaffi.contrib.django.conf import build_app

        with _lock:
            if _app is None:
                _app = build_app()
            current = _app
    return current


def __getattr__(name: str) -> Any:
    # PEP 562: ``app`` is built on first access, so importing this package (as Django does
    # for INSTALLED_APPS) reads no settings.
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
