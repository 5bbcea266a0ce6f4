"""AsyncConnection and AsyncClient against the fake server: the same API and rules as the
sync client, as coroutines. Each test drives its own event loop with asyncio.run."""

from __future__ import annotations

import asyncio
import json
import os
import select
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from kaffi.client import AsyncClient, AsyncConnection, AsyncJob, resolve_settings
from kaffi.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    ConnectTimeout,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    ServerError,
    ValidationError,
)
from kaffi.protocol.commands import encode_ack, encode_fetch, encode_info
from kaffi.protocol.resp import BulkReply, SimpleReply, encode_bulk
from tests.support import CLOSE, SILENT, FakeFaktory, closed_port_url, expected_pwdhash

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def sent_json(line: str) -> Any:
    return json.loads(line.split(" ", 1)[1])


def with_client(
    server: FakeFaktory, body: Callable[[AsyncClient], Awaitable[None]], **options: Any
) -> None:
    async def main() -> None:
        async with AsyncClient(server.url, **options) as client:
            await body(client)

    run(main())


# -- connection ----------------------------------------------------------------------------


def test_connection_handshake_request_pipeline_close(fake: FakeFaktory) -> None:
    async def main() -> None:
        s = resolve_settings(fake.url, connect_timeout=2)
        conn = await AsyncConnection.open(s, wid="w-9", labels=["l"], hostname="h")
        assert await conn.request(encode_ack("jid-00000001")) == SimpleReply("OK")
        assert await conn.pipeline([encode_ack("jid-00000002"), encode_fetch("q")]) == [
            SimpleReply("OK"),
            BulkReply(None),
        ]
        assert await conn.pipeline([]) == []
        assert not conn.is_stale()
        assert "open" in repr(conn)
        await conn.close()

    run(main())
    hello = sent_json(fake.commands("HELLO")[0])
    assert hello == {"v": 2, "hostname": "h", "wid": "w-9", "pid": os.getpid(), "labels": ["l"]}
    fake.wait_for(lambda: fake.sessions[0].ended)


def test_connection_password() -> None:
    with FakeFaktory(password="pw", salt="NaCl", iterations=7) as server:

        async def main() -> None:
            conn = await AsyncConnection.open(resolve_settings(server.url))
            await conn.close()
            wrong = resolve_settings(server.url, password="nope")
            with pytest.raises(AuthenticationError, match="password"):
                await AsyncConnection.open(wrong)

        run(main())
        assert sent_json(server.commands("HELLO")[0])["pwdhash"] == expected_pwdhash(
            "pw", "NaCl", 7
        )


def test_connection_refused() -> None:
    url = closed_port_url()

    async def main() -> None:
        with pytest.raises(ConnectError, match="could not connect"):
            await AsyncConnection.open(resolve_settings(url))

    run(main())


def test_silent_server_at_connect() -> None:
    with FakeFaktory(greeting=b"") as server:

        async def main() -> None:
            with pytest.raises(ConnectTimeout):
                await AsyncConnection.open(resolve_settings(server.url, connect_timeout=0.3))

        started = time.monotonic()
        run(main())
        assert time.monotonic() - started < 5


def test_garbage_greeting() -> None:
    with FakeFaktory(greeting=b"garbage\r\n") as server:

        async def main() -> None:
            with pytest.raises(RemoteProtocolError):
                await AsyncConnection.open(resolve_settings(server.url))

        run(main())


def test_connection_failures_mark_it_broken(fake: FakeFaktory) -> None:
    fake.script("INFO", b"!!!\r\n", SILENT)
    fake.script("FETCH", (b"$10\r\n{", CLOSE))

    async def main() -> None:
        s = resolve_settings(fake.url, timeout=0.3)
        conn = await AsyncConnection.open(s)
        with pytest.raises(RemoteProtocolError):
            await conn.request(encode_info())
        assert conn.broken
        with pytest.raises(ReadError, match="broken"):
            await conn.request(encode_info())
        await conn.close()

        conn = await AsyncConnection.open(s)
        started = time.monotonic()
        with pytest.raises(ReadTimeout):
            await conn.request(encode_info())
        assert time.monotonic() - started < 5
        await conn.close()

        conn = await AsyncConnection.open(s)
        with pytest.raises(ReadError, match="closed the connection"):
            await conn.request(encode_fetch("q"))
        assert conn.reply_started
        await conn.close()

    run(main())


def test_every_read_keeps_its_own_deadline(fake: FakeFaktory) -> None:
    # Reads share one lazily re-armed timer per connection: a shorter deadline must move
    # it earlier, and a later one must be honoured after the timer fires at an old one.
    fake.script("INFO", SILENT, SILENT)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        s = resolve_settings(fake.url, timeout=20)
        conn = await AsyncConnection.open(s)
        assert await conn.request(encode_fetch("q"), timeout=20) == BulkReply(None)
        started = loop.time()
        with pytest.raises(ReadTimeout):
            await conn.request(encode_info(), timeout=0.3)
        assert loop.time() - started < 5
        await conn.close()

        conn = await AsyncConnection.open(s)
        assert await conn.request(encode_fetch("q"), timeout=0.2) == BulkReply(None)
        started = loop.time()
        with pytest.raises(ReadTimeout):
            await conn.request(encode_info(), timeout=0.6)
        assert 0.55 <= loop.time() - started < 10
        assert conn.broken
        await conn.close()

    run(main())


def test_cancelled_request_poisons_the_connection(fake: FakeFaktory) -> None:
    fake.script("INFO", SILENT)

    async def main() -> None:
        conn = await AsyncConnection.open(resolve_settings(fake.url))
        task = asyncio.ensure_future(conn.request(encode_info()))
        await asyncio.sleep(0)  # the task writes INFO, then waits for the reply
        fake.wait_for(lambda: fake.commands("INFO") == ["INFO"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert conn.broken  # its reply may still come, out of step with the next request
        await conn.close()

    run(main())


def test_connection_notices_a_server_restart(fake: FakeFaktory) -> None:
    async def main() -> None:
        conn = await AsyncConnection.open(resolve_settings(fake.url))
        fake.drop_connections()
        deadline = time.monotonic() + 5
        while not conn.is_stale():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await conn.close()

    run(main())


# -- client --------------------------------------------------------------------------------


def test_every_method(fake: FakeFaktory) -> None:
    fake.script("BEAT", b'$17\r\n{"state":"quiet"}\r\n')

    async def body(client: AsyncClient) -> None:
        await client.connect()
        jid = await client.push({"jobtype": "A", "queue": "q", "args": [1]})
        job = client.job("B", 2)
        assert isinstance(job, AsyncJob)
        job.queue = "q"
        jid2 = await job.push()
        fetched = await client.fetch("q")
        assert fetched is not None
        assert fetched.jid == jid
        fetched = await client.fetch("q")
        assert fetched is not None
        assert fetched.jid == jid2
        assert await client.fetch("q") is None
        await client.ack(jid)
        try:
            raise KeyError("k")
        except KeyError as exc:
            await client.fail(jid2, exc)
        assert await client.beat() == "quiet"
        assert await client.beat("quiet", 10) == "OK"
        rejected = await client.push_bulk([{"jobtype": "A", "queue": "b"} for _ in range(1500)])
        assert rejected == []
        info = await client.info()
        assert info.faktory.queues["b"] == 1500
        await client.queue_pause("b")
        await client.queue_resume("b")
        await client.queue_remove("b")
        assert await client.queue_latency("b") == {"b": 1.5}
        await client.retries.of_type("A").requeue()
        await client.dead.with_jids("x").discard()
        await client.scheduled.matching("*x*").kill()
        await client.dead.clear()
        await client.flush()
        assert await client.send("ACK", '{"jid":"jid-00000001"}') == "OK"
        assert await client.send("END") is None
        assert "AsyncClient" in repr(client)

    with_client(fake, body, wid="aw-1")
    assert len(fake.commands("PUSHB")) == 2
    fail = sent_json(fake.commands("FAIL")[0])
    assert fail["errtype"] == "KeyError"
    assert fail["backtrace"]
    assert [sent_json(line)["cmd"] for line in fake.commands("MUTATE")] == [
        "requeue",
        "discard",
        "kill",
        "clear",
    ]
    assert fake.commands("QUEUE") == [
        "QUEUE PAUSE b",
        "QUEUE RESUME b",
        "QUEUE REMOVE b",
        "QUEUE LATENCY b",
    ]
    assert sent_json(fake.commands("BEAT")[1]) == {
        "wid": "aw-1",
        "current_state": "quiet",
        "rss_kb": 10,
    }


def test_errors(fake: FakeFaktory) -> None:
    fake.script("PUSH", b"-ERR jobs must have a jobtype parameter\r\n")
    fake.script("PUSHB", encode_bulk('{"jid-reject-01":"no"}'))

    async def body(client: AsyncClient) -> None:
        with pytest.raises(ServerError) as info:
            await client.push({"jobtype": "A"})
        assert info.value.message == "jobs must have a jobtype parameter"
        assert client.pool.idle == 1  # a server error keeps the connection
        with pytest.raises(ValidationError, match="queue"):
            await client.push({"jobtype": "A", "queue": "no way"})
        rejected = await client.push_bulk([{"jobtype": "A", "jid": "jid-reject-01"}])
        assert [(r.jid, r.reason) for r in rejected] == [("jid-reject-01", "no")]
        with pytest.raises(ConfigurationError, match="wid"):
            await client.beat()
        with pytest.raises(ServerError, match="unknown command"):
            await client.send("NOSUCH")
        with pytest.raises(ConfigurationError):
            await AsyncJob("A").push()

    with_client(fake, body)
    assert len(fake.sessions) == 1


def test_retry_rules(fake: FakeFaktory) -> None:
    async def body(client: AsyncClient) -> None:
        await client.connect()
        fake.script("PUSH", CLOSE)
        jid = await client.push({"jobtype": "A"})
        assert [sent_json(line)["jid"] for line in fake.commands("PUSH")] == [jid, jid]
        fake.script("FETCH", CLOSE)
        with pytest.raises(ReadError):
            await client.fetch("q")
        assert len(fake.commands("FETCH")) == 1
        fake.script("FAIL", CLOSE)
        with pytest.raises(ReadError):
            await client.fail("jid-00000001", errtype="E")
        assert len(fake.commands("FAIL")) == 1
        fake.script("ACK", (b"+", CLOSE))
        with pytest.raises(ReadError):
            await client.ack("jid-00000001")
        assert len(fake.commands("ACK")) == 1
        fake.script("INFO", CLOSE, CLOSE)
        with pytest.raises(ReadError):
            await client.info()
        assert len(fake.commands("INFO")) == 2

    with_client(fake, body)


def test_timeout_is_not_retried(fake: FakeFaktory) -> None:
    fake.script("PUSH", SILENT)

    async def body(client: AsyncClient) -> None:
        with pytest.raises(ReadTimeout):
            await client.push({"jobtype": "A"})

    with_client(fake, body, timeout=0.3)
    assert len(fake.commands("PUSH")) == 1


def test_authentication_error_not_retried() -> None:
    with FakeFaktory(password="right") as server:

        async def main() -> None:
            client = AsyncClient(f"tcp://:wrong@127.0.0.1:{server.port}")
            with pytest.raises(AuthenticationError):
                await client.push({"jobtype": "A"})
            assert client.pool.in_use == 0
            await client.close()

        run(main())
        assert len(server.commands("HELLO")) == 1


def test_server_restart_is_invisible(fake: FakeFaktory) -> None:
    async def body(client: AsyncClient) -> None:
        await client.push({"jobtype": "A", "queue": "q"})
        fake.drop_connections()
        await client.push({"jobtype": "A", "queue": "q"})
        assert await client.fetch("q") is not None

    with_client(fake, body)
    assert len(fake.sessions) == 2


def test_idle_connection_closed_by_the_server_is_replaced_before_a_fetch(
    fake: FakeFaktory,
) -> None:
    fake.queues["q"].append({"jid": "jid-00000001", "jobtype": "A", "args": []})

    async def body(client: AsyncClient) -> None:
        conn = await client.pool.acquire()
        fileno = conn._transport.get_extra_info("socket").fileno()
        await client.pool.release(conn)
        fake.drop_connections()
        # Wait (without letting the event loop run) until the close reached our socket:
        # the pool must notice it even though asyncio has not seen it yet.
        ready, _, _ = select.select([fileno], [], [], 5)
        assert ready
        assert await client.fetch("q") is not None

    with_client(fake, body)
    assert len(fake.sessions) == 2
    assert fake.commands("FETCH") == ["FETCH q"]


def test_pool_timeout_and_handover(fake: FakeFaktory) -> None:
    async def body(client: AsyncClient) -> None:
        conn = await client.pool.acquire()
        with pytest.raises(PoolTimeout, match="all 1 are in use"):
            await client.push({"jobtype": "A"})
        waiting = asyncio.ensure_future(client.push({"jobtype": "A"}))
        await asyncio.sleep(0)  # one step of the task: it blocks in acquire
        assert not waiting.done()
        assert client.pool.waiting == 1
        await client.pool.release(conn)
        assert client.pool.waiting == 0
        assert len(await asyncio.wait_for(waiting, 10)) >= 8
        assert client.pool.in_use == 0
        assert "idle=1 in_use=0 size=1" in repr(client.pool)

    with_client(fake, body, pool_size=1, pool_timeout=0.2)
    assert len(fake.sessions) == 1


def test_cancelled_waiter_passes_the_connection_on(fake: FakeFaktory) -> None:
    async def body(client: AsyncClient) -> None:
        conn = await client.pool.acquire()
        first = asyncio.ensure_future(client.pool.acquire())
        second = asyncio.ensure_future(client.push({"jobtype": "A"}))
        await asyncio.sleep(0)
        first.cancel()
        await client.pool.release(conn)
        await asyncio.wait_for(second, 10)
        assert first.cancelled()
        assert client.pool.in_use == 0

    with_client(fake, body, pool_size=1, pool_timeout=10)


def test_pool_context_manager_rules(fake: FakeFaktory) -> None:
    async def body(client: AsyncClient) -> None:
        pool = client.pool
        with pytest.raises(ServerError):
            async with pool.connection():
                raise ServerError("ERR", "x")
        assert pool.idle == 1
        with pytest.raises(ReadError):
            async with pool.connection():
                raise ReadError("x")
        assert pool.idle == 0
        assert pool.in_use == 0

    with_client(fake, body)


def test_concurrent_tasks_share_the_pool(fake: FakeFaktory) -> None:
    async def body(client: AsyncClient) -> None:
        await asyncio.gather(*(client.push({"jobtype": "A"}) for _ in range(100)))
        assert client.pool.in_use == 0

    with_client(fake, body, pool_size=4)
    assert len(fake.commands("PUSH")) == 100
    assert len(fake.sessions) <= 4


def test_client_survives_a_new_event_loop(fake: FakeFaktory) -> None:
    client = AsyncClient(fake.url)
    run(client.push({"jobtype": "A"}))
    run(client.push({"jobtype": "A"}))
    run(client.close())
    assert len(fake.commands("PUSH")) == 2
    assert len(fake.sessions) == 2
    # The connections of finished loops were closed (no END: their loops could not run it).
    fake.wait_for(lambda: fake.sessions[0].closed and fake.sessions[1].closed)
