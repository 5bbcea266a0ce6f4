"""INFO's ``tasks`` block: Faktory 1.10.0's keys, order and meanings (issue 20).

Client code reads set sizes from this block (the Node client's tests read
``info.faktory.tasks.Retries.size``), so its shape is part of the protocol."""

from __future__ import annotations

import json

import pytest

from kaffi.protocol.resp import Command
from kaffi.server import gocompat
from kaffi.server.core import DEAD_TTL, HEARTBEAT_EXPIRY, ServerCore
from kaffi.server.jobs import parse_job
from kaffi.server.session import Session


def job(jid: str, **fields: object) -> dict[str, object]:
    return parse_job(json.dumps({"jid": jid, "jobtype": "A", "args": [], "retry": 5, **fields}))


def info_over_the_wire(core: ServerCore) -> dict[str, object]:
    """INFO as a client reads it: through a session, decoded from the bulk reply."""
    s = Session(core, 1)
    assert s.handle(Command("HELLO", '{"v":2}')).reply == b"+OK\r\n"
    reply = s.handle(Command("INFO", None)).reply
    assert reply is not None
    body = reply.split(b"\r\n", 1)[1].rstrip(b"\r\n")
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


def tasks(core: ServerCore) -> dict[str, dict[str, object]]:
    block = info_over_the_wire(core)["faktory"]
    assert isinstance(block, dict)
    result = block["tasks"]
    assert isinstance(result, dict)
    return result


def test_keys_and_order_are_faktorys() -> None:
    block = tasks(ServerCore())
    assert list(block) == ["Busy", "Dead", "Retries", "Scheduled", "Workers"]
    assert list(block["Busy"]) == ["reaped", "size"]
    assert list(block["Workers"]) == ["reaped", "size"]
    for scanner in ("Dead", "Retries", "Scheduled"):
        assert list(block[scanner]) == ["cycles", "enqueued", "size", "wall_time_sec"]
    assert block["Busy"] == {"reaped": 0, "size": 0}
    assert block["Workers"] == {"reaped": 0, "size": 0}


def test_sizes_follow_the_sets_reservations_and_workers() -> None:
    core = ServerCore()
    core.register("w-1", "host", 1, [], 7)
    core.register("w-2", "host", 2, [], 8)
    core.push(job("jid-sched-001", at="2099-01-01T00:00:00Z"))
    core.push(job("jid-retry-001"))
    core.push(job("jid-dead-0001", retry=-1))
    core.push(job("jid-busy-0001"))
    for _ in range(3):
        assert core.fetch(["default"], "w-1") is not None
    core.fail("jid-retry-001", "E", "retry me", None)
    core.fail("jid-dead-0001", "E", "dead now", None)
    block = tasks(core)
    assert block["Scheduled"]["size"] == 1
    assert block["Retries"]["size"] == 1
    assert block["Dead"]["size"] == 1
    assert block["Busy"]["size"] == 1  # jid-busy-0001 is still reserved
    assert block["Workers"]["size"] == 2
    sets = info_over_the_wire(core)["faktory"]
    assert isinstance(sets, dict)
    assert sets["sets"] == {"dead": 1, "retries": 1, "scheduled": 1, "working": 1}


def test_counters_mean_what_they_mean_in_faktory() -> None:
    core = ServerCore()
    core.register("w-1", "host", 1, [], 7)
    core.push(job("jid-sched-001", at="2099-01-01T00:00:00Z"))
    core.push(job("jid-retry-001"))
    core.push(job("jid-dead-0001", retry=-1))
    core.push(job("jid-reaped-01", reserve_for=60))
    for _ in range(3):
        assert core.fetch(["default"], "w-1") is not None
    core.fail("jid-retry-001", "E", "retry me", None)
    core.fail("jid-dead-0001", "E", "dead now", None)
    core.tick()
    block = tasks(core)
    # One run of each scanner so far, and nothing was due yet.
    for scanner in ("Dead", "Retries", "Scheduled"):
        assert block[scanner]["cycles"] == 1
        assert block[scanner]["enqueued"] == 0
        wall = block[scanner]["wall_time_sec"]
        assert isinstance(wall, (int, float))
        assert wall >= 0
    # The retry falls due (at most 15 + 29 s for a first failure), the reservation of
    # jid-reaped-01 (60 s) expires, the worker falls silent and the scheduled job's
    # time comes: each background task moves or reaps exactly one thing.
    core.clock.advance(HEARTBEAT_EXPIRY + 1)
    core.tick()
    core.clock.advance(200 * 365 * 86400)  # past 2099 and the dead set's 180 days
    core.tick()
    block = tasks(core)
    assert block["Retries"]["enqueued"] == 1 + 1  # the failure, then the reaped job
    assert block["Scheduled"]["enqueued"] == 1
    assert block["Dead"]["enqueued"] == 1  # purged after DEAD_TTL
    assert DEAD_TTL < 200 * 365 * 86400
    assert block["Busy"] == {"reaped": 1, "size": 0}
    assert block["Workers"] == {"reaped": 1, "size": 0}
    for scanner in ("Dead", "Retries", "Scheduled"):
        assert block[scanner]["cycles"] == 3
        assert block[scanner]["size"] == 0


@pytest.mark.parametrize(
    ("value", "go"),
    [
        (0.0, "0"),
        (2.0, "2"),
        (0.0016, "0.0016"),
        (4.5e-06, "0.0000045"),
        (1e-06, "0.000001"),
        (1.5e-07, "1.5e-7"),
        (1e-10, "1e-10"),
        (123456.789, "123456.789"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (-0.25, "-0.25"),
    ],
)
def test_floats_are_written_like_go(value: float, go: str) -> None:
    assert gocompat.format_float(value) == go
    assert float(go) == value


def test_dumps_is_compact_and_keeps_key_order() -> None:
    doc = {"b": [1, 2.5, None, True], "a": {"z": "x\u00e9 <&>", "y": 3e-06}}
    expected = '{"b":[1,2.5,null,true],"a":{"z":"x\u00e9 \\u003c\\u0026\\u003e","y":0.000003}}'
    assert gocompat.dumps(doc) == expected
    with pytest.raises(gocompat.GoJSONError):
        gocompat.format_float(float("nan"))
