"""The Enterprise features of the server's state machine, without sockets: unique locks,
expiry at FETCH, TRACK, and what stays exactly as before without ``enterprise=True``."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from kaffi.protocol.resp import Command
from kaffi.server.core import ServerCore, Waiter
from kaffi.server.enterprise import TRACK_TTL, NotUniqueRejected, unique_key
from kaffi.server.jobs import parse_job
from kaffi.server.session import Session

#: Rust's UniqueConstraintViolation needs the NOTUNIQUE code and Ruby's push returns it as
#: :NOTUNIQUE; faktory-rs asserts the text "Job not unique" against real Enterprise.
NOT_UNIQUE = b"-NOTUNIQUE Job not unique\r\n"


def job(jid: str, **fields: Any) -> dict[str, Any]:
    return parse_job(json.dumps({"jid": jid, "jobtype": "A", "args": [1], **fields}))


def unique(jid: str, seconds: float = 60, until: str | None = None, **fields: Any) -> str:
    custom: dict[str, Any] = {"unique_for": seconds}
    if until:
        custom["unique_until"] = until
    return json.dumps({"jid": jid, "jobtype": "A", "args": [1], "custom": custom, **fields})


def session(core: ServerCore, wid: str = "w1") -> Session:
    s = Session(core, 1)
    hello = {"v": 2, "hostname": "h", "pid": 1, "wid": wid}
    assert s.handle(Command("HELLO", json.dumps(hello))).reply == b"+OK\r\n"
    return s


def rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).isoformat().replace("+00:00", "Z")


def test_duplicate_push_is_refused_until_success() -> None:
    core = ServerCore(enterprise=True)
    s = session(core)
    assert s.handle(Command("PUSH", unique("a" * 24))).reply == b"+OK\r\n"
    assert s.handle(Command("PUSH", unique("b" * 24))).reply == NOT_UNIQUE
    # Another queue or other args are another job; a push without unique_for ignores locks.
    assert s.handle(Command("PUSH", unique("c" * 24, queue="low"))).reply == b"+OK\r\n"
    other_args = unique("d" * 24).replace('"args": [1]', '"args": [2]')
    assert s.handle(Command("PUSH", other_args)).reply == b"+OK\r\n"
    bypass = json.dumps({"jid": "e" * 24, "jobtype": "A", "args": [1]})
    assert s.handle(Command("PUSH", bypass)).reply == b"+OK\r\n"
    assert core.fetch(["default"], "w1") is not None  # the original, still locked
    assert s.handle(Command("PUSH", unique("f" * 24))).reply == NOT_UNIQUE
    core.ack("a" * 24)
    assert s.handle(Command("PUSH", unique("g" * 24))).reply == b"+OK\r\n"


def test_a_bypassing_job_does_not_release_the_lock() -> None:
    core = ServerCore(enterprise=True)
    core.push(job("a" * 24, custom={"unique_for": 60}))
    core.push(job("b" * 24))
    assert core.fetch(["default"], "w")
    bypass = core.fetch(["default"], "w")
    assert bypass is not None
    assert bypass.jid == "b" * 24
    core.ack("b" * 24)
    try:
        core.push(job("c" * 24, custom={"unique_for": 60}))
    except NotUniqueRejected:
        pass
    else:
        raise AssertionError("the lock was released by a job that did not hold it")


def test_unique_until_start_releases_at_fetch() -> None:
    core = ServerCore(enterprise=True)
    s = session(core)
    assert s.handle(Command("PUSH", unique("a" * 24, until="start"))).reply == b"+OK\r\n"
    assert s.handle(Command("PUSH", unique("b" * 24, until="start"))).reply == NOT_UNIQUE
    assert core.fetch(["default"], "w1") is not None
    assert s.handle(Command("PUSH", unique("c" * 24, until="start"))).reply == b"+OK\r\n"


def test_lock_survives_a_crashed_worker_until_unique_for_lapses() -> None:
    core = ServerCore(enterprise=True)
    s = session(core)
    assert s.handle(Command("PUSH", unique("a" * 24, 600, reserve_for=60))).reply == b"+OK\r\n"
    assert core.fetch(["default"], "w1") is not None
    # The worker dies: no ACK. Its reservation expires and the job waits to retry.
    core.clock.advance(61)
    core.tick()
    assert len(core.retries) == 1
    assert not core.reservations
    assert s.handle(Command("PUSH", unique("b" * 24, 600))).reply == NOT_UNIQUE
    core.clock.advance(600)
    core.tick()
    assert s.handle(Command("PUSH", unique("c" * 24, 600))).reply == b"+OK\r\n"


def test_scheduled_lock_lasts_delay_plus_unique_for() -> None:
    core = ServerCore(enterprise=True)
    at = rfc3339(core.clock.now() + 100)
    core.push(job("a" * 24, at=at, custom={"unique_for": 50}))
    core.clock.advance(140)
    with pytest.raises(NotUniqueRejected):  # the lock lasts delay + unique_for
        core.push(job("b" * 24, custom={"unique_for": 50}))
    core.clock.advance(11)
    core.push(job("c" * 24, custom={"unique_for": 50}))
    # c is stored once the lock ended.
    assert [queued.jid for queued in core.queues["default"].jobs] == ["c" * 24]


def test_pushb_reports_duplicates_per_job() -> None:
    core = ServerCore(enterprise=True)
    s = session(core)
    jobs = [json.loads(unique(c * 24)) for c in "ab"] + [json.loads(unique("c" * 24, queue="q"))]
    reply = s.handle(Command("PUSHB", json.dumps(jobs))).reply
    assert reply is not None
    body = json.loads(reply.split(b"\r\n")[1])
    assert body == {"b" * 24: "NOTUNIQUE Job not unique"}


def test_expired_jobs_are_dropped_at_fetch_and_counted() -> None:
    core = ServerCore(enterprise=True)
    soon = rfc3339(core.clock.now() + 30)
    core.push(job("a" * 24, custom={"expires_at": soon}))
    core.push(job("b" * 24, custom={"expires_at": "2000-01-01T00:00:00Z"}))
    core.push(job("c" * 24))
    core.clock.advance(31)
    res = core.fetch(["default"], "w")
    assert res is not None
    assert res.jid == "c" * 24
    assert core.enterprise is not None
    assert core.enterprise.expired == 2
    assert core.info()["faktory"]["total_expired"] == 2
    assert core.fetch(["default"], "w") is None


def test_an_expired_job_is_not_handed_to_a_waiting_fetch() -> None:
    core = ServerCore(enterprise=True)
    got: list[Any] = []
    waiter = Waiter(["default"], "w", got.append, lambda: True)
    core.add_waiter(waiter)
    core.push(job("a" * 24, custom={"expires_at": "2000-01-01T00:00:00Z"}))
    assert got == []
    assert not core.reservations
    core.push(job("b" * 24))
    assert [r.jid for r in got] == ["b" * 24]


def test_track_follows_the_job_and_keeps_the_last_values() -> None:
    core = ServerCore(enterprise=True)
    s = session(core)

    def get(jid: str) -> dict[str, Any]:
        reply = s.handle(Command("TRACK", f"GET {jid}")).reply
        assert reply is not None
        doc: dict[str, Any] = json.loads(reply.split(b"\r\n")[1])
        return doc

    assert get("nope") == {"jid": "nope", "state": "unknown", "updated_at": ""}
    core.push(job("a" * 24, custom={"track": 1}, retry=1))
    assert get("a" * 24)["state"] == "enqueued"
    set_line = json.dumps({"jid": "a" * 24, "percent": 10, "desc": "queued"})
    assert s.handle(Command("TRACK", f"SET {set_line}")).reply == b"+OK\r\n"
    core.fetch(["default"], "w1")
    doc = get("a" * 24)
    assert (doc["state"], doc["percent"], doc["desc"]) == ("working", 10, "queued")
    core.fail("a" * 24, "E", "boom", None)
    assert get("a" * 24)["state"] == "failed"
    core.push(job("b" * 24, custom={"track": 1}, retry=0, queue="b"))
    core.fetch(["b"], "w1")
    core.fail("b" * 24, "E", "boom", None)
    assert get("b" * 24)["state"] == "failed"
    core.push(job("c" * 24, custom={"track": 1}, retry=-1, queue="c"))
    core.fetch(["c"], "w1")
    core.fail("c" * 24, "E", "boom", None)
    assert get("c" * 24)["state"] == "dead"
    core.push(job("d" * 24, custom={"track": 1}, queue="d"))
    core.fetch(["d"], "w1")
    core.ack("d" * 24)
    assert get("d" * 24)["state"] == "success"
    # Records live TRACK_TTL after their last change.
    core.clock.advance(TRACK_TTL + 1)
    core.tick()
    assert get("d" * 24)["state"] == "unknown"


def test_track_set_on_an_untracked_job_records_nothing() -> None:
    core = ServerCore(enterprise=True)
    s = session(core)
    core.push(job("a" * 24))
    line = json.dumps({"jid": "a" * 24, "percent": 50})
    assert s.handle(Command("TRACK", f"SET {line}")).reply == b"+OK\r\n"
    reply = s.handle(Command("TRACK", "GET " + "a" * 24)).reply
    assert reply is not None
    assert b'"state":"unknown"' in reply


def test_reserve_until_extends_a_reservation_past_reserve_for() -> None:
    core = ServerCore(enterprise=True)
    s = session(core)
    core.push(job("a" * 24, reserve_for=60, custom={"track": 1}))
    res = core.fetch(["default"], "w1")
    assert res is not None
    until = rfc3339(core.clock.now() + 600)
    line = json.dumps({"jid": "a" * 24, "reserve_until": until})
    assert s.handle(Command("TRACK", f"SET {line}")).reply == b"+OK\r\n"
    core.clock.advance(120)
    core.tick()
    assert "a" * 24 in core.reservations
    assert not core.retries
    # It cannot shorten the reservation.
    earlier = json.dumps({"jid": "a" * 24, "reserve_until": rfc3339(core.clock.now() + 1)})
    assert s.handle(Command("TRACK", f"SET {earlier}")).reply == b"+OK\r\n"
    core.clock.advance(60)
    core.tick()
    assert "a" * 24 in core.reservations
    core.clock.advance(600)
    core.tick()
    assert not core.reservations
    assert len(core.retries) == 1


def test_bad_track_lines_get_errors_and_the_connection_goes_on() -> None:
    s = session(ServerCore(enterprise=True))
    cases = {
        "SET {": b"-ERR invalid JSON",
        "SET []": b"-ERR TRACK SET needs a JSON object",
        'SET {"percent":5}': b"-ERR TRACK SET needs a jid",
        'SET {"jid":"a","percent":"x"}': b"-ERR invalid TRACK SET",
        'SET {"jid":"a","reserve_until":"soon"}': b"-ERR invalid reserve_until soon",
        "GET": b"-ERR TRACK GET needs a jid",
        "DROP x": b"-ERR no such TRACK subcommand: DROP",
    }
    for line, start in cases.items():
        reply = s.handle(Command("TRACK", line)).reply
        assert reply is not None
        assert reply.startswith(start), (line, reply)
    batch = s.handle(Command("BATCH", "NEW {}")).reply
    assert batch == b"-ERR batch requires a success or complete callback\r\n"


def test_without_enterprise_nothing_reads_custom() -> None:
    core = ServerCore()
    s = session(core)
    assert core.enterprise is None
    for jid in ("a" * 24, "b" * 24):
        assert s.handle(Command("PUSH", unique(jid))).reply == b"+OK\r\n"
    core.push(job("c" * 24, custom={"expires_at": "2000-01-01T00:00:00Z"}))
    assert len(core.queues["default"].jobs) == 3
    info = core.info()
    assert "total_expired" not in info["faktory"]
    # Go's and Ruby's tests look for "Enterprise" here to run their Enterprise tests.
    assert "Enterprise" not in info["server"]["description"]
    for verb, text in (("TRACK", "tracking"), ("BATCH", "batch")):
        reply = s.handle(Command(verb, "GET x")).reply
        assert (
            reply == f"-ERR {text} subsystem is only available in Faktory Enterprise\r\n".encode()
        )


def test_flush_forgets_locks_records_and_the_counter() -> None:
    core = ServerCore(enterprise=True)
    core.push(job("a" * 24, custom={"unique_for": 60, "track": 1}))
    core.push(job("b" * 24, custom={"expires_at": "2000-01-01T00:00:00Z"}))
    core.fetch(["default"], "w")
    core.flush()
    assert core.enterprise is not None
    assert not core.enterprise.locks
    assert not core.enterprise.tracks
    assert core.enterprise.expired == 0
    core.push(job("c" * 24, custom={"unique_for": 60}))


def test_unique_key_is_jobtype_queue_and_args() -> None:
    base = {"jobtype": "A", "queue": "q", "args": [{"b": 1, "a": 2}]}
    same = {"jobtype": "A", "queue": "q", "args": [{"a": 2, "b": 1}]}
    assert unique_key(base) == unique_key(same)
    assert unique_key(base) != unique_key({**base, "queue": "r"})
    assert unique_key(base) != unique_key({**base, "jobtype": "B"})


def test_the_same_jid_pushed_again_is_not_a_duplicate() -> None:
    # A client resends a PUSH whose reply was lost: the job must not refuse itself.
    core = ServerCore(enterprise=True)
    s = session(core)
    assert s.handle(Command("PUSH", unique("a" * 24))).reply == b"+OK\r\n"
    assert s.handle(Command("PUSH", unique("a" * 24))).reply == b"+OK\r\n"
    assert s.handle(Command("PUSH", unique("b" * 24))).reply == NOT_UNIQUE
