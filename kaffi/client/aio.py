"""The asyncio client: :class:`AsyncClient`.

:class:`AsyncClient` has :class:`~kaffi.client.Client`'s API as coroutines, from the same
command definitions (:mod:`kaffi.client.base`), so both send the same bytes and follow
the same retry rules. What is left here is what only an asyncio client has: its pool of
:class:`~kaffi.client.aio_connection.AsyncConnection`, its ``_call`` and
``async with AsyncClient() as client:``. A client belongs to one event loop at a time;
used from a new loop it drops the old loop's connections and opens new ones.

Nothing here may block the event loop.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any

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

__all__ = ["AsyncConnection", "AsyncClient"]


class AsyncClient(ClientBase[AsyncJob, AsyncMutation], AwaitedCommands):
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

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @staticmethod
    def _request_method(build: Callable[..., Request[Any]]) -> Callable[..., Any]:
        """Every command of this client, as a coroutine: build the request, send it on a
        pooled connection, decode the reply (the rules of ``Client._request_method``)."""

        async def awaited_command(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
            line, retry, timeout, decode, arg = build(self, *args, **kwargs)
            pool = self.pool
            conn = await pool.acquire(verify=not retry)
            try:
                reply = await conn.request(line, timeout=timeout)
            except BaseException as exc:
                plan = retry_once(pool, conn, exc, line, retry, timeout)
                return decode(await run_plan_async(plan), arg)
            await pool.release(conn)
            return decode(reply, arg)

        return awaited_command

    @staticmethod
    def _plan_method(build: Callable[..., Plan[Any]]) -> Callable[..., Any]:
        """Commands of more than one round trip: await their plan step by step."""

        async def awaited_plan(self: AsyncClient, *args: Any, **kwargs: Any) -> Any:
            return await run_plan_async(build(self, *args, **kwargs))

        return awaited_plan
