"""Sync and asyncio Faktory clients, their connections and pools.

- :class:`Client` / :class:`AsyncClient`: thread-safe / asyncio pooled clients;
- :class:`Job` / :class:`AsyncJob`: job builders bound to a client (``client.job(...)``);
- :class:`Mutation` / :class:`AsyncMutation`: MUTATE on the retry, scheduled and dead sets;
- :class:`ConnectionSettings` and :func:`resolve_settings`: where and how to connect;
- :class:`Connection` / :class:`AsyncConnection` and the pools, for code (the worker) that
  drives connections itself.

Everything here is built on the sans-IO :mod:`kaffi.protocol`; OS and ssl errors become
:mod:`kaffi.errors` exceptions in one place only, :mod:`kaffi.client.boundary`.
"""

from kaffi.client.aio import AsyncClient, AsyncConnection
from kaffi.client.client import Client
from kaffi.client.config import ConnectionSettings, resolve_settings
from kaffi.client.connection import Connection
from kaffi.client.job import AsyncJob, Job
from kaffi.client.mutation import AsyncMutation, Mutation
from kaffi.client.pool import AsyncConnectionPool, ConnectionPool

__all__ = [
    "AsyncClient",
    "AsyncConnection",
    "AsyncConnectionPool",
    "AsyncJob",
    "AsyncMutation",
    "Client",
    "Connection",
    "ConnectionPool",
    "ConnectionSettings",
    "Job",
    "Mutation",
    "resolve_settings",
]
