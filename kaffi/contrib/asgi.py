"""kaffi in Starlette and FastAPI apps: the App's AsyncClient for the life of the app.

::

    from fastapi import Depends, FastAPI
    from kaffi.client import AsyncClient
    from kaffi.contrib.asgi import get_async_client, kaffi_lifespan

    api = FastAPI(lifespan=kaffi_lifespan(app))

    @api.post("/reports", status_code=202)
    async def report(client: AsyncClient = Depends(get_async_client)) -> dict[str, str]:
        return {"jid": await build_report.delay_async(42)}

:func:`kaffi_lifespan` opens the App's pooled :class:`~kaffi.client.AsyncClient` when
the app starts (one connection, HI/HELLO: a wrong URL or password stops the start-up
instead of failing the first request) and closes it, on the same event loop, when the
app shuts down. ``await task.delay_async(...)`` uses that pool and never blocks the loop:
while one request waits for the server, the others are served.

:func:`get_app` and :func:`get_async_client` are dependencies (FastAPI's ``Depends``, or
called with a Starlette ``Request``) that hand an endpoint the App and its client from the
lifespan state. This module imports Starlette (the ``kaffi[asgi]`` extra), not FastAPI.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from kaffi.errors import ConfigurationError

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.client import AsyncClient

__all__ = ["STATE_KEY", "get_app", "get_async_client", "kaffi_lifespan"]

#: The lifespan state key the App is kept under (``request.state.kaffi``).
STATE_KEY = "kaffi"

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


def kaffi_lifespan(
    app: App,
    *,
    connect: bool = True,
    lifespan: Lifespan | None = None,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[Mapping[str, Any]]]:
    """A Starlette/FastAPI ``lifespan=`` that opens ``app.async_client`` at start-up and
    closes it at shutdown.

    ``connect=False`` skips the start-up connection (the pool then connects on first
    use). ``lifespan`` is your own lifespan, run inside this one (so your start-up code
    can already push); the state it yields is merged with kaffi's.
    """

    @contextlib.asynccontextmanager
    async def run(asgi_app: Any) -> AsyncIterator[Mapping[str, Any]]:
        client = app.async_client
        try:
            if connect:
                await client.connect()
            state: dict[str, Any] = {STATE_KEY: app}
            if lifespan is None:
                yield state
            else:
                async with lifespan(asgi_app) as inner:
                    if inner:
                        state.update(inner)
                    yield state
        finally:
            # The pool's connections belong to this loop: close them before it ends.
            await app.aclose()

    return run


def get_app(connection: HTTPConnection) -> App:
    """Dependency: the kaffi App of :func:`kaffi_lifespan` (``Depends(get_app)``)."""
    app = getattr(connection.state, STATE_KEY, None)
    if app is None:
        raise ConfigurationError(
            "no kaffi App in this request's state: create the web app with"
            " lifespan=kaffi_lifespan(app) (kaffi.contrib.asgi)"
        )
    found: App = app
    return found


def get_async_client(connection: HTTPConnection) -> AsyncClient:
    """Dependency: the App's pooled AsyncClient (``Depends(get_async_client)``)."""
    return get_app(connection).async_client
