"""The scheduled set holds each identical payload once, as Faktory 1.10.0's does.

Faktory keeps its scheduled set as a Redis sorted set whose members are the jobs' JSON as
the server re-encodes it, so two PUSHes of the same job (same ``jid``, ``created_at`` and
future ``at``) leave one entry, whatever the key order and whichever connection sent
them. Periodic jobs (:mod:`kaffi.periodic`) rely on it. These tests state each fact and
its negative ones, and, like ``test_transcript.py``, they run against the real Faktory
named by ``KAFFI_TEST_URL`` when that is set.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from kaffi.server import EmbeddedServer

# `wire` connects to `srv`: here the embedded server, or the real Faktory of KAFFI_TEST_URL.
from tests.server.test_transcript import srv  # noqa: F401
from tests.server.wire import Wire
from tests.support import wait_until


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def push(conn: Wire, job: dict[str, Any]) -> None:
    assert conn.send("PUSH " + json.dumps(job, separators=(",", ":"))) == ["+OK"]


def sets(conn: Wire) -> dict[str, int]:
    info = conn.value("INFO")
    return dict(info["faktory"]["sets"])


def queue_size(conn: Wire, queue: str) -> int:
    info = conn.value("INFO")
    return int(info["faktory"]["queues"].get(queue, 0))


def job(jid: str, queue: str, **fields: Any) -> dict[str, Any]:
    return {"jid": jid, "jobtype": "Tick", "queue": queue, "args": [1, {"b": 2, "a": 1}], **fields}


def test_identical_scheduled_pushes_from_two_connections_leave_one_entry_that_runs_once(
    wire: Callable[..., Wire],
) -> None:
    first, second = wire(), wire()
    at = rfc3339(datetime.now(timezone.utc) + timedelta(seconds=1.5))
    stamp = "2026-01-01T00:00:00.000000Z"
    push(first, job("jid-merge-0001", "merge", at=at, created_at=stamp))
    # Same job, keys in the opposite order (and inside args' object too), other connection.
    reordered = dict(
        reversed(list(job("jid-merge-0001", "merge", at=at, created_at=stamp).items()))
    )
    reordered["args"] = [1, {"a": 1, "b": 2}]
    push(second, reordered)
    assert sets(first)["scheduled"] == 1

    # Faktory moves due jobs every 5 s, the embedded server every second.
    wait_until(lambda: sets(first)["scheduled"] == 0, "the scheduled job to become due", 20)
    assert queue_size(first, "merge") == 1
    fetched = json.loads(wire("w-merge").send("FETCH merge")[1])
    assert fetched["jid"] == "jid-merge-0001"
    assert queue_size(first, "merge") == 0


def test_scheduled_pushes_without_created_at_are_both_kept(wire: Callable[..., Wire]) -> None:
    conn = wire()
    at = rfc3339(datetime.now(timezone.utc) + timedelta(hours=1))
    push(conn, job("jid-nostamp-01", "nostamp", at=at))
    push(conn, job("jid-nostamp-01", "nostamp", at=at))
    assert sets(conn)["scheduled"] == 2


def test_scheduled_pushes_that_differ_are_both_kept(wire: Callable[..., Wire]) -> None:
    conn = wire()
    at = datetime.now(timezone.utc) + timedelta(hours=1)
    stamp = "2026-01-01T00:00:00.000000Z"
    push(conn, job("jid-differ-001", "differ", at=rfc3339(at), created_at=stamp))
    # Another at, another created_at, other args: each is a distinct member.
    push(
        conn,
        job("jid-differ-001", "differ", at=rfc3339(at + timedelta(seconds=1)), created_at=stamp),
    )
    push(conn, job("jid-differ-001", "differ", at=rfc3339(at), created_at=stamp[:-2] + "1Z"))
    push(conn, {**job("jid-differ-001", "differ", at=rfc3339(at), created_at=stamp), "args": [2]})
    assert sets(conn)["scheduled"] == 4


def test_identical_pushes_straight_to_a_queue_are_never_merged(wire: Callable[..., Wire]) -> None:
    conn = wire()
    stamp = "2026-01-01T00:00:00.000000Z"
    push(conn, job("jid-queued-001", "unmerged", created_at=stamp))
    push(conn, job("jid-queued-001", "unmerged", created_at=stamp))
    assert queue_size(conn, "unmerged") == 2
    assert sets(conn)["scheduled"] == 0
    # A past `at` goes to the queue too, and is not merged either.
    past = rfc3339(datetime.now(timezone.utc) - timedelta(minutes=1))
    push(conn, job("jid-queued-002", "unmerged", at=past, created_at=stamp))
    push(conn, job("jid-queued-002", "unmerged", at=past, created_at=stamp))
    assert queue_size(conn, "unmerged") == 4


def test_a_merged_entry_can_be_scheduled_again_once_it_has_left_the_set(
    wire: Callable[..., Wire],
) -> None:
    conn = wire()
    at = rfc3339(datetime.now(timezone.utc) + timedelta(hours=1))
    stamp = "2026-01-01T00:00:00.000000Z"
    scheduled = job("jid-again-0001", "again", at=at, created_at=stamp)
    push(conn, scheduled)
    assert conn.send(
        'MUTATE {"cmd":"discard","target":"scheduled","filter":{"jids":["jid-again-0001"]}}'
    ) == ["+OK"]
    assert sets(conn)["scheduled"] == 0
    push(conn, scheduled)
    push(conn, scheduled)
    assert sets(conn)["scheduled"] == 1


def test_the_embedded_server_still_merges_after_a_restart_from_its_data(
    tmp_path: Path, wire: Callable[..., Wire]
) -> None:
    data = tmp_path / "jobs.sqlite3"
    at = rfc3339(datetime.now(timezone.utc) + timedelta(hours=1))
    scheduled = job("jid-durable-01", "durable", at=at, created_at="2026-01-01T00:00:00.000000Z")
    with EmbeddedServer(data=data) as first:
        push(wire(server=first), scheduled)
    with EmbeddedServer(data=data) as again:
        conn = wire(server=again)
        push(conn, scheduled)
        assert sets(conn)["scheduled"] == 1
