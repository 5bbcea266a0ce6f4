"""The asyncio client: :class:`AsyncClient`.

:class:`AsyncClient` has :class:`~kaffi.client.Client`'s API as coroutines, from the same
command definitions (:mod:`kaffi.client.base`), so both send the same bytes and follow
the same retry rules. What is left here is what only an asyncio client has: its pool of
:class:`~kaffi.client.aio_connection.AsyncConnection`, its ``_request`` and
``async with AsyncClient() as client:``. A client belongs to one event loop at a time;
used from a new loop it drops the old loop's connections and opens new ones.

Nothing here may block the event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from kaffi._bases import AsyncClosing
from kaffi.client.aio_connection import AsyncConnection
from kaffi.client.base import (
    AwaitedCommands,
    ClientBase,
    Plan,
    Request,
    retry_once,
    run_plan_async,
)
from kaffi.client.job import AsyncJob
from kaffi.client.mutation import AsyncMutation
from kaffi.client.pool import AsyncConnectionPool

T = TypeVar("T")

__all__ = ["AsyncConnection", "AsyncClient"]


class AsyncClient(AsyncClosing, ClientBase[AsyncJob, AsyncMutation], AwaitedCommands):
    """:class:`~kaffi.client.Client` for asyncio: the same arguments, the same methods as
    coroutines (``await client.push(job)``), ``async with AsyncClient() as client:``."""

    pool: AsyncConnectionPool
    _job_type = AsyncJob
    _mutation_type = AsyncMutation

    def _new_pool(self, size: int, timeout: float, hostname: str | None) -> AsyncConnectionPool:
        opener = functools.partial(
            AsyncConnection.open,
            self.settings,
            wid=self.wid,
            labels=self.labels,
            hostname=hostname,
        )
        return AsyncConnectionPool(opener, size=size, timeout=timeout, label=self.settings.url)

    async def connect(self) -> AsyncClient:
        """Open one connection (HI/HELLO) to prove the server is reachable, then pool it."""
        await self.pool.release(await self.pool.acquire())
        return self

    async def close(self) -> None:
        """END and close the idle connections; the client can still be used afterwards."""
        await self.pool.close()

    @staticmethod
    def _command_method(method: Callable[..., Any]) -> Callable[..., Any]:
        # A coroutine function, so that a bad argument is raised where the call is
        # awaited, as from any coroutine.
        async def awaited_command(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
            return await method(self, *args, **kwargs)

        functools.update_wrapper(awaited_command, method)
        awaited_command.__qualname__ = f"AsyncClient.{method.__name__}"
        return awaited_command

    async def _request(self, request: Request[T]) -> T:  # type: ignore[override]
        line, retry, timeout, decode, arg = request
        pool = self.pool
        conn = await pool.acquire(verify=not retry)
        try:
            reply = await conn.request(line, timeout=timeout)
        except BaseException as exc:
            reply = await run_plan_async(retry_once(pool, conn, exc, line, retry, timeout))
        else:
            await pool.release(conn)
        return decode(reply, arg)

    async def _run(self, plan: Plan[T]) -> T:  # type: ignore[override]
        return await run_plan_async(plan)
