"""What Django's database layer needs from kaffi, and kaffi from it.

- **Connections around each job.** Django calls ``close_old_connections()`` when a request
  starts and when it ends, so a connection the database closed (a restart, MySQL's
  ``wait_timeout``, a proxy's idle limit) or one past ``CONN_MAX_AGE`` is never reused.
  A worker has no requests, so :func:`install` adds two worker middleware that do the
  same around each job: :func:`close_connections_plain` for plain jobs, in the worker
  thread the job function then runs in (Django's connections belong to a thread), and
  :func:`close_connections_async` for ``async def`` jobs, which reach the ORM through
  ``sync_to_async``: each such job gets its own thread for that (asgiref's
  ``ThreadSensitiveContext``, as Django gives each ASGI request), cleaned up before and
  after. Each middleware lets the other kind of job through untouched. Worker processes
  install them (:mod:`kaffi.contrib.django.boot`); a web or test process does not, so
  the testing modes run a job in the caller's thread, inside the test's transaction.
- **delay_on_commit.** :func:`on_commit` is the hook :meth:`kaffi.app.task.Task.delay_on_commit`
  uses: ``transaction.on_commit`` on the default database.
- **Model instances refused.** A model instance (or a queryset) passed to ``.delay()`` is
  refused with advice to pass the primary key, through
  :func:`kaffi.app.signature.refuse_argument_type`.

This module imports Django; nothing outside ``kaffi.contrib.django`` imports it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import close_old_connections, transaction

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.app.execution import JobContext

__all__ = [
    "MODEL_ADVICE",
    "QUERYSET_ADVICE",
    "close_connections_async",
    "close_connections_plain",
    "install",
    "install_hooks",
    "on_commit",
]

MODEL_ADVICE = (
    "pass its primary key (obj.pk) and load the row in the task: job arguments travel as"
    " JSON, to workers in any language, and a row may change before the job runs"
)
QUERYSET_ADVICE = (
    "pass a list of primary keys (list(qs.values_list('pk', flat=True))) and query in the"
    " task: job arguments travel as JSON, to workers in any language"
)


def _is_async_job(ctx: JobContext) -> bool:
    task = ctx.task
    return task is not None and task.is_async


def close_connections_plain(ctx: JobContext, next: Callable[[], None]) -> None:
    """Worker middleware: ``close_old_connections()`` before and after a plain job, in the
    thread that runs it (async jobs pass through)."""
    if _is_async_job(ctx):
        next()
        return
    close_old_connections()
    try:
        next()
    finally:
        close_old_connections()


async def close_connections_async(ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
    """Worker middleware: an ``async def`` job's ``sync_to_async`` calls run in a thread of
    their own, with ``close_old_connections()`` there before and after (plain jobs pass
    through)."""
    if not _is_async_job(ctx):
        await next()
        return
    async with ThreadSensitiveContext():
        await sync_to_async(close_old_connections)()
        try:
            await next()
        finally:
            await sync_to_async(close_old_connections)()


def on_commit(callback: Callable[[], object]) -> None:
    """The on-commit hook for ``delay_on_commit``: run ``callback`` when the current
    transaction of the default database commits (at once outside a transaction)."""
    transaction.on_commit(callback)


_hooks_installed = False


def install_hooks() -> None:
    """Install the process-wide parts: the on-commit hook and the refused argument types
    (Django's Model and QuerySet). Idempotent."""
    global _hooks_installed
    if _hooks_installed:
        return
    from django.db.models import Model, QuerySet

    from kaffi.app.signature import refuse_argument_type
    from kaffi.app.task import set_on_commit_hook

    set_on_commit_hook(on_commit)
    refuse_argument_type(Model, MODEL_ADVICE)
    refuse_argument_type(QuerySet, QUERYSET_ADVICE)
    _hooks_installed = True


def install(app: App) -> App:
    """Install the process-wide hooks and the connection middleware on ``app`` (outermost,
    so every other middleware already sees clean connections); returns the App.

    Worker processes of ``manage.py kaffi_worker`` do this for the project's App; call it
    yourself before running a worker of your own (``app.worker(...)``) in a Django
    process. Not in a process that only pushes or runs tests: the middleware would move
    plain jobs of the testing modes into a worker thread, away from the test's
    transaction, and closing connections is the test case's business there."""
    install_hooks()
    middleware: list[Any] = [close_connections_async, close_connections_plain]
    for mw in middleware:
        if mw not in app.middleware:
            app.middleware.insert(middleware.index(mw), mw)
    return app
