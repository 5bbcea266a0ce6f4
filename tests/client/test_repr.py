"""``repr()`` of clients, pools and the embedded server: informative, never the password."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kaffi.client import AsyncClient, Client
from tests.support import embedded_server

PASSWORD = "s3cret-pw-9z"


def test_sync_client_and_pool_repr_show_state_not_the_password() -> None:
    with embedded_server(password=PASSWORD) as srv:
        assert PASSWORD in srv.url  # the URL a client needs carries it...
        assert PASSWORD not in repr(srv)  # ...the repr never does
        assert f"listening on 127.0.0.1:{srv.port}" in repr(srv)
        assert "storage=memory" in repr(srv)
        with Client(srv.url, wid="w-repr", pool_size=3) as client:
            client.connect()
            text = repr(client)
            assert text.startswith(f"<Client tcp://127.0.0.1:{srv.port} wid=w-repr ")
            assert "<ConnectionPool" in text
            assert "idle=1 in_use=0 size=3" in text
            assert PASSWORD not in text
            with client.pool.connection():
                assert "idle=0 in_use=1 size=3" in repr(client.pool)
            assert PASSWORD not in repr(client.pool) + repr(client.settings)


def test_async_client_and_pool_repr_show_state_not_the_password() -> None:
    async def main() -> tuple[str, str]:
        async with (
            embedded_server(password=PASSWORD) as srv,
            AsyncClient(srv.url, pool_size=2) as client,
        ):
            await client.connect()
            async with client.pool.connection():
                busy = repr(client.pool)
            return repr(client), busy

    text, busy = asyncio.run(asyncio.wait_for(main(), 30))
    assert text.startswith("<AsyncClient tcp://127.0.0.1:")
    assert "wid=" not in text  # a producer has no wid
    assert "<AsyncConnectionPool" in text
    assert "idle=1 in_use=0 size=2 waiting=0" in text
    assert "idle=0 in_use=1 size=2" in busy
    assert PASSWORD not in text + busy


def test_server_repr_names_its_data_file(tmp_path: Path) -> None:
    data = tmp_path / "jobs.sqlite3"
    with embedded_server(data=data, password=PASSWORD) as srv:
        assert f"storage={data}" in repr(srv)
        assert PASSWORD not in repr(srv)
    assert repr(srv) == f"<EmbeddedServer stopped storage={data}>"
