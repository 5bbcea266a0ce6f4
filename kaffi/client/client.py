"""The thread-safe, pooled Faktory client: :class:`Client`.

Every command is defined once, in :mod:`kaffi.client.base`, for this client and the
asyncio one; the retry-once rule is written there too. What is left here is what only
a blocking client has: its pool of :class:`~kaffi.client.connection.Connection`, the one
path every command takes (``Client._request``), and ``with Client() as client:``.

This module never touches a socket (connections do) and never builds command bytes
itself (:mod:`kaffi.protocol.commands` does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from kaffi._bases import Closing
from kaffi.client.base import (
    BULK_IN_FLIGHT,
    DEFAULT_POOL_TIMEOUT,
    PUSHB_CHUNK,
    BlockingCommands,
    BulkChunks,
    ClientBase,
    JobLike,
    Plan,
    Request,
    retry_once,
    run_plan,
)
from kaffi.client.connection import Connection
from kaffi.client.job import Job
from kaffi.client.mutation import Mutation
from kaffi.client.pool import ConnectionPool

T = TypeVar("T")

__all__ = [
    "Client",
    "ClientBase",
    "BulkChunks",
    "BULK_IN_FLIGHT",
    "PUSHB_CHUNK",
    "DEFAULT_POOL_TIMEOUT",
    "JobLike",
]


class Client(Closing, ClientBase[Job, Mutation], BlockingCommands):
    """A thread-safe Faktory client over a pool of 1..``pool_size`` lazily opened connections.

    Where to connect is resolved by :func:`~kaffi.client.config.resolve_settings`: ``url``
    (``tcp://:PASSWORD@host:7419``, ``tcp+tls://`` for TLS) and ``host``/``port``/
    ``password``, else ``FAKTORY_PROVIDER``, else ``FAKTORY_URL``, else
    ``tcp://localhost:7419``; ``tls`` is an :class:`ssl.SSLContext`, True or False;
    ``settings`` (already resolved) skips all that. ``timeout`` bounds every read and
    write, ``connect_timeout`` the connect and HI/HELLO, ``pool_timeout`` the wait for a
    free connection (then :class:`~kaffi.errors.PoolTimeout`).

    With ``wid`` every pooled connection says HELLO as that worker (Faktory allows many
    connections per wid), so :meth:`fetch` and :meth:`beat` work from any of them;
    ``labels`` and ``hostname`` go into that HELLO too.

    Every method borrows a pooled connection for one command; ``-ERR`` raises
    :class:`~kaffi.errors.ServerError` and keeps the connection, a network failure throws
    it away (see :mod:`kaffi.client.base` for the retry-once rule).
    """

    pool: ConnectionPool
    _job_type = Job
    _mutation_type = Mutation

    def _new_pool(self, size: int, timeout: float, hostname: str | None) -> ConnectionPool:
        opener = functools.partial(
            Connection.open, self.settings, wid=self.wid, labels=self.labels, hostname=hostname
        )
        return ConnectionPool(opener, size=size, timeout=timeout, label=self.settings.url)

    def connect(self) -> Client:
        """Open one connection (HI/HELLO) to prove the server is reachable, then pool it."""
        self.pool.release(self.pool.acquire())
        return self

    def close(self) -> None:
        """END and close the idle connections; the client can still be used afterwards."""
        self.pool.close()

    @staticmethod
    def _command_method(method: Callable[..., Any]) -> Callable[..., Any]:
        # The shared definition is this client's method as it is: no wrapper, no cost.
        return method

    def _request(self, request: Request[T]) -> T:  # type: ignore[override]
        line, retry, timeout, decode, arg = request
        pool = self.pool
        # A command that is never retried must not run on a connection the server closed
        # moments ago; the others may: their retry covers a connection found dead.
        conn = pool.acquire(verify=not retry)
        try:
            reply = conn.request(line, timeout=timeout)
        except BaseException as exc:
            reply = run_plan(retry_once(pool, conn, exc, line, retry, timeout))
        else:
            pool.release(conn)
        return decode(reply, arg)

    def _run(self, plan: Plan[T]) -> T:  # type: ignore[override]
        return run_plan(plan)
