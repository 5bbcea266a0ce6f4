"""push_bulk: chunk-by-chunk validation, two chunks in flight, resending after a drop,
and the pool's cheap borrow (no getpid, no stale probe for a connection just used)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from kaffi.client import AsyncClient, Client
from kaffi.client import pool as pool_module
from kaffi.client.client import PUSHB_CHUNK
from kaffi.client.connection import Connection
from kaffi.errors import ReadTimeout, ServerError, TransportError, ValidationError
from kaffi.protocol.models import EncodedJob, JobPayload
from kaffi.protocol.resp import encode_bulk, encode_error
from tests.support import CLOSE, SILENT, FakeFaktory


def pushb_jids(line: str) -> list[str]:
    return [job["jid"] for job in json.loads(line.split(" ", 1)[1])]


def jobs(n: int) -> list[dict[str, Any]]:
    return [{"jobtype": "A", "jid": f"jid-bulk-{i:06d}"} for i in range(n)]


# -- pipelining ---------------------------------------------------------------------------


def test_the_next_chunk_is_written_before_the_last_reply_is_read(fake: FakeFaktory) -> None:
    # The server answers nothing: the first two chunks arrive (two in flight), the third
    # is never written (never more than two).
    fake.script("PUSHB", SILENT, SILENT, SILENT)
    with Client(fake.url, timeout=1, connect_timeout=5) as client:
        with pytest.raises(ReadTimeout):
            client.push_bulk(jobs(PUSHB_CHUNK * 3))
        fake.wait_for(lambda: len(fake.commands("PUSHB")) == 2)
        assert len(fake.commands("PUSHB")) == 2
        # The connection still owed a reply: it was thrown away, not pooled.
        assert client.pool.idle == 0
        assert client.pool.in_use == 0


def test_rejections_come_back_in_order_across_chunks(client: Client, fake: FakeFaktory) -> None:
    given = jobs(PUSHB_CHUNK * 2 + 10)
    fake.script(
        "PUSHB",
        encode_bulk('{"jid-bulk-000003":"bad three","jid-bulk-000001":"bad one"}'),
        encode_bulk('{"jid-bulk-001500":"bad 1500"}'),
        encode_bulk('{"jid-bulk-002009":"bad last"}'),
    )
    rejected = client.push_bulk(iter(given))
    assert [(r.jid, r.reason) for r in rejected] == [
        ("jid-bulk-000001", "bad one"),
        ("jid-bulk-000003", "bad three"),
        ("jid-bulk-001500", "bad 1500"),
        ("jid-bulk-002009", "bad last"),
    ]
    assert rejected[0].payload["jobtype"] == "A"
    sent = [jid for line in fake.commands("PUSHB") for jid in pushb_jids(line)]
    assert sent == [job["jid"] for job in given]
    assert client.pool.idle == 1


def test_a_dropped_connection_resends_every_unanswered_chunk_once(
    client: Client, fake: FakeFaktory
) -> None:
    given = jobs(PUSHB_CHUNK * 3)
    fake.script("PUSHB", CLOSE)
    assert client.push_bulk(given) == []
    second = fake.sessions[-1]
    assert len(fake.sessions) == 2
    # On the new connection: chunk 1 (never answered) and everything after it, in order.
    resent = [jid for line in second.lines if line.startswith("PUSHB ") for jid in pushb_jids(line)]
    assert resent == [job["jid"] for job in given]


def test_a_second_drop_of_the_same_chunk_is_raised(client: Client, fake: FakeFaktory) -> None:
    fake.script("PUSHB", CLOSE, CLOSE)
    with pytest.raises(TransportError):
        client.push_bulk(jobs(10))
    assert len(fake.sessions) == 2


def test_a_refused_chunk_raises_and_drops_the_connection(client: Client, fake: FakeFaktory) -> None:
    fake.script("PUSHB", encode_error("nope"))
    with pytest.raises(ServerError, match="nope"):
        client.push_bulk(jobs(PUSHB_CHUNK * 2))
    # The second chunk's reply was still owed: that connection is not reused.
    assert client.pool.idle == 0
    assert client.push_bulk(jobs(1)) == []


# -- validation ---------------------------------------------------------------------------


def test_a_bad_job_in_the_first_chunk_sends_nothing(client: Client, fake: FakeFaktory) -> None:
    given: list[Any] = jobs(PUSHB_CHUNK + 5)
    given[7] = {"jobtype": ""}
    with pytest.raises(ValidationError, match=r"push_bulk job 7: .*jobtype.*; nothing was sent"):
        client.push_bulk(given)
    assert fake.commands("PUSHB") == []


def test_a_bad_job_in_a_later_chunk_says_what_was_pushed(client: Client, fake: FakeFaktory) -> None:
    given: list[Any] = jobs(PUSHB_CHUNK * 2 + 5)
    given[PUSHB_CHUNK + 3] = {"jobtype": "A", "queue": "no spaces"}
    fake.script("PUSHB", encode_bulk('{"jid-bulk-000002":"refused"}'))
    message = (
        r"push_bulk job 1003: .*queue.*; jobs 0 to 999 were already pushed, of which the "
        r"server refused 1 \(jid-bulk-000002\), nothing from job 1000 on"
    )
    with pytest.raises(ValidationError, match=message) as caught:
        client.push_bulk(given)
    assert caught.value.field == "queue"
    lines = fake.commands("PUSHB")
    assert len(lines) == 1
    assert pushb_jids(lines[0]) == [job["jid"] for job in given[:PUSHB_CHUNK]]
    # The reply to the chunk sent was read: the connection is back in the pool.
    assert client.pool.idle == 1


def test_encoded_jobs_are_sent_as_they_are(client: Client, fake: FakeFaktory) -> None:
    encoded = EncodedJob.from_checked({"jid": "jid-encoded-1", "jobtype": "A", "args": [1]})
    assert client.push_bulk([encoded, JobPayload.create(jobtype="B", jid="jid-model-01")]) == []
    assert json.loads(fake.commands("PUSHB")[0].split(" ", 1)[1]) == [
        {"jid": "jid-encoded-1", "jobtype": "A", "args": [1]},
        JobPayload.create(jobtype="B", jid="jid-model-01").to_wire(),
    ]
    assert client.push(encoded) == "jid-encoded-1"
    assert fake.commands("PUSH") == ['PUSH {"jid":"jid-encoded-1","jobtype":"A","args":[1]}']


# -- asyncio ------------------------------------------------------------------------------


def run_async(fake: FakeFaktory, body: Any, **options: Any) -> None:
    async def main() -> None:
        async with AsyncClient(fake.url, **options) as client:
            await body(client)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_async_two_in_flight_and_resend_after_a_drop(fake: FakeFaktory) -> None:
    given = jobs(PUSHB_CHUNK * 2 + 1)
    chunks = [given[:PUSHB_CHUNK], given[PUSHB_CHUNK:-1], given[-1:]]
    fake.script("PUSHB", encode_bulk('{"jid-bulk-000000":"no"}'), CLOSE)

    async def body(client: AsyncClient) -> None:
        rejected = await client.push_bulk(given)
        assert [r.jid for r in rejected] == ["jid-bulk-000000"]

    run_async(fake, body)

    def sent(session: Any) -> list[list[str]]:
        return [pushb_jids(line) for line in session.lines if line.startswith("PUSHB ")]

    expected = [[job["jid"] for job in chunk] for chunk in chunks]
    assert len(fake.sessions) == 2
    # The second chunk met the drop; it went again, with the third, on a new connection.
    assert sent(fake.sessions[0]) == expected[:2]
    assert sent(fake.sessions[1]) == expected[1:]


def test_async_a_bad_job_in_a_later_chunk(fake: FakeFaktory) -> None:
    given: list[Any] = jobs(PUSHB_CHUNK + 1)
    given[PUSHB_CHUNK] = {"jobtype": "A", "reserve_for": 90_000}

    async def body(client: AsyncClient) -> None:
        with pytest.raises(ValidationError, match=r"job 1000: .*jobs 0 to 999 were already"):
            await client.push_bulk(given)
        assert client.pool.idle == 1

    run_async(fake, body)
    assert len(fake.commands("PUSHB")) == 1


def test_async_the_third_chunk_waits_for_the_first_reply(fake: FakeFaktory) -> None:
    fake.script("PUSHB", SILENT, SILENT, SILENT)

    async def body(client: AsyncClient) -> None:
        with pytest.raises(ReadTimeout):
            await client.push_bulk(jobs(PUSHB_CHUNK * 3))

    run_async(fake, body, timeout=1)
    fake.wait_for(lambda: len(fake.commands("PUSHB")) == 2)
    assert len(fake.commands("PUSHB")) == 2


# -- the pool's borrow ---------------------------------------------------------------------


def test_borrowing_makes_no_getpid_call(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    client.connect()

    def no_getpid() -> int:
        raise AssertionError("getpid() on the borrow path")

    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", no_getpid)
        for _ in range(3):
            client.push({"jobtype": "A"})
    assert client.pool.idle == 1


def test_only_a_connection_idle_for_a_while_is_probed(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    probes: list[Connection] = []
    real = Connection.is_stale

    def counting(conn: Connection) -> bool:
        probes.append(conn)
        return real(conn)

    monkeypatch.setattr(Connection, "is_stale", counting)
    monkeypatch.setattr(pool_module, "STALE_CHECK_AFTER", 3600.0)
    client.push({"jobtype": "A"})
    client.push({"jobtype": "A"})
    assert probes == []
    client.fetch("q")  # never retried: always checked
    assert len(probes) == 1
    monkeypatch.setattr(pool_module, "STALE_CHECK_AFTER", -1.0)
    client.push({"jobtype": "A"})
    assert len(probes) == 2
