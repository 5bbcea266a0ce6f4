"""A real server restart (the embedded server, stopped and started again on the same port
and data file) is invisible to a client between calls: its pooled connections went
stale, and the next call, even a FETCH that is never retried, just works."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kaffi.client import AsyncClient, Client
from tests.support import embedded_server


def test_sync_client_across_a_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "jobs.sqlite3"
    with embedded_server(data=data) as first:
        port = first.port
        client = Client(first.url, wid="w-restart", pool_size=2)
        jid = client.push({"jobtype": "A", "queue": "restart"})
        assert client.pool.idle == 1
    try:
        with embedded_server(f"127.0.0.1:{port}", data=data):
            job = client.fetch("restart")  # FETCH is never retried: the pool must notice
            assert job is not None
            assert job.jid == jid
            client.ack(job.jid)
            assert client.beat() == "OK"
            assert client.info().faktory.queues == {"restart": 0}
    finally:
        client.close()


def test_async_client_across_a_server_restart(tmp_path: Path) -> None:
    data = tmp_path / "jobs.sqlite3"

    async def main() -> None:
        async with embedded_server(data=data) as first:
            port = first.port
            client = AsyncClient(first.url, wid="w-arestart", pool_size=2)
            jid = await client.push({"jobtype": "A", "queue": "restart"})
            assert client.pool.idle == 1
        try:
            async with embedded_server(f"127.0.0.1:{port}", data=data):
                job = await client.fetch("restart")
                assert job is not None
                assert job.jid == jid
                await client.ack(job.jid)
                assert await client.beat() == "OK"
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(main(), 30))
