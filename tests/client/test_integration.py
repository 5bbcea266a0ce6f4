"""The clients against a live server: the embedded one from the ``faktory_server`` fixture,
or any real Faktory when ``KAFFI_TEST_URL=tcp://...`` is set (the fixture FLUSHes it
first). Only behaviour a real Faktory 1.10.0 shows is asserted here."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kaffi.client import AsyncClient, Client
from kaffi.errors import ServerError
from kaffi.protocol.models import new_jid


@pytest.fixture
def client(faktory_server: Any) -> Any:
    with Client(faktory_server.url, wid="kaffi-it-" + new_jid()[:8]) as c:
        yield c


def test_push_fetch_ack(client: Client) -> None:
    jid = client.push({"jobtype": "A", "args": [1, "two", {"three": 3}], "queue": "it-q"})
    assert client.info().faktory.queues.get("it-q") == 1
    job = client.fetch("it-q")
    assert job is not None
    assert job.jid == jid
    assert job.args == [1, "two", {"three": 3}]
    assert job.enqueued_at is not None
    client.ack(jid)
    assert client.info().faktory.queues.get("it-q") == 0


def test_job_builder_and_custom(client: Client) -> None:
    job = client.job("B", "x")
    job.queue = "it-b"
    job.custom = {"trace": "t"}
    job.reserve_for = 120
    jid = job.push()
    fetched = client.fetch("it-b")
    assert fetched is not None
    assert (fetched.jid, fetched.custom, fetched.reserve_for) == (jid, {"trace": "t"}, 120)
    client.ack(jid)


def test_fetch_order_and_empty(client: Client) -> None:
    low = client.push({"jobtype": "A", "queue": "it-low"})
    high = client.push({"jobtype": "A", "queue": "it-high"})
    first = client.fetch("it-high", "it-low")
    second = client.fetch("it-high", "it-low")
    assert first is not None
    assert second is not None
    assert (first.jid, second.jid) == (high, low)
    client.ack(high)
    client.ack(low)


def test_fail_then_retry_set_and_mutate(client: Client) -> None:
    jid = client.push({"jobtype": "Failing", "queue": "it-f", "retry": 3})
    assert client.fetch("it-f") is not None
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        client.fail(jid, exc)
    assert client.info().faktory.sets["retries"] == 1
    client.retries.with_jids(jid).requeue()
    job = client.fetch("it-f")
    assert job is not None
    assert job.failure is not None
    assert job.failure.errtype == "RuntimeError"
    assert job.failure.message == "boom"
    client.fail(jid, errtype="E", message="again")
    client.retries.of_type("Failing").kill()
    assert client.info().faktory.sets["dead"] == 1
    client.dead.matching("*Failing*").discard()
    assert client.info().faktory.sets["dead"] == 0


def test_fail_unknown_job_is_a_server_error(client: Client) -> None:
    with pytest.raises(ServerError) as info:
        client.fail("jid-unknown-xx", errtype="E", message="m")
    assert info.value.message == "Job not found jid-unknown-xx"
    client.ack("jid-unknown-xx")  # the connection is still fine


def test_push_bulk(client: Client) -> None:
    rejected = client.push_bulk([{"jobtype": "A", "queue": "it-bulk"} for _ in range(1200)])
    assert rejected == []
    assert client.info().faktory.queues["it-bulk"] == 1200
    raw = client.send("PUSHB", '[{"jid":"bad","jobtype":"A","args":[]}]')
    assert raw is not None
    assert json.loads(raw) == {"bad": "jobs must have a reasonable jid parameter"}


def test_queues(client: Client) -> None:
    client.push({"jobtype": "A", "queue": "it-pause"})
    client.queue_pause("it-pause")
    client.queue_resume("it-pause")
    latency = client.queue_latency("it-pause")
    assert set(latency) == {"it-pause"}
    assert latency["it-pause"] >= 0
    client.queue_remove("it-pause")
    assert "it-pause" not in client.info().faktory.queues


def test_beat_and_flush(client: Client) -> None:
    assert client.beat() == "OK"
    client.push({"jobtype": "A", "queue": "it-flush"})
    client.flush()
    assert client.info().faktory.queues.get("it-flush", 0) == 0


def test_server_error_keeps_the_connection(client: Client) -> None:
    with pytest.raises(ServerError, match="unknown command"):
        client.send("NOSUCH")
    with pytest.raises(ServerError, match="at least one queue"):
        client.send("FETCH")
    assert client.pool.idle == 1
    client.push({"jobtype": "A"})
    assert client.pool.idle == 1


def test_async_client(faktory_server: Any) -> None:
    async def main() -> None:
        async with AsyncClient(faktory_server.url, wid="kaffi-ait-" + new_jid()[:8]) as client:
            jids = await asyncio.gather(
                *(client.push({"jobtype": "A", "queue": "it-async"}) for _ in range(20))
            )
            assert (await client.info()).faktory.queues["it-async"] == 20
            job = await client.fetch("it-async")
            assert job is not None
            assert job.jid in jids
            await client.ack(job.jid)
            assert await client.beat() == "OK"
            assert await client.push_bulk([{"jobtype": "A", "queue": "it-async"}]) == []
            await client.queue_remove("it-async")
            await client.dead.clear()

    asyncio.run(asyncio.wait_for(main(), 60))
