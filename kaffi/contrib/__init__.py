"""Optional integrations with other frameworks, each behind its own extra.

- :mod:`kaffi.contrib.django` (``kaffi[django]``): a Django app: settings, one App per
  project with task discovery, ``manage.py kaffi_worker``, database connections handled
  around each job, ``task.delay_on_commit()`` and model instances refused as arguments.
- :mod:`kaffi.contrib.asgi` (``kaffi[asgi]``): Starlette and FastAPI: a lifespan that opens
  and closes the App's AsyncClient, and dependencies handing it to endpoints.

Nothing outside this package imports it, and ``import kaffi`` never does: each module
here imports its framework, which is only installed with the extra.
"""
