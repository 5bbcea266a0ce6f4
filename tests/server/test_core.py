"""The server's state machine and command handling, without sockets (sans-IO)."""

from __future__ import annotations

import json

import pytest

from kaffi.protocol.commands import password_hash
from kaffi.protocol.resp import Command
from kaffi.server.core import (
    DEAD_TTL,
    HEARTBEAT_EXPIRY,
    CoreError,
    ServerCore,
    Waiter,
    glob_to_regex,
    retry_delay,
)
from kaffi.server.jobs import JobRejected, encode_job, parse_job
from kaffi.server.session import CLOSE, WAIT, Session


def job(jid: str, **fields: object) -> dict[str, object]:
    text = json.dumps({"jid": jid, "jobtype": "A", "args": [], **fields})
    return parse_job(text)


def session(core: ServerCore, wid: str | None = None, conn_id: int = 1) -> Session:
    s = Session(core, conn_id)
    hello = {"v": 2, "hostname": "h", "pid": 1}
    if wid:
        hello["wid"] = wid
    assert s.handle(Command("HELLO", json.dumps(hello))).reply == b"+OK\r\n"
    return s


def test_fetch_order_is_strict_and_paused_queues_are_skipped() -> None:
    core = ServerCore()
    core.push(job("jid-low-0001", queue="low"))
    core.push(job("jid-high-001", queue="high"))
    res = core.fetch(["high", "low"], "w")
    assert res is not None
    assert res.jid == "jid-high-001"
    core.pause(["low"])
    assert core.fetch(["high", "low"], "w") is None
    core.resume(["low"])
    res = core.fetch(["high", "low"], "w")
    assert res is not None
    assert res.jid == "jid-low-0001"


def test_waiter_gets_pushed_job_and_dead_waiter_is_skipped() -> None:
    core = ServerCore()
    got: list[str] = []
    dead = Waiter(["q"], "w", lambda r: got.append("dead:" + r.jid), lambda: False)
    live = Waiter(["q"], "w", lambda r: got.append(r.jid), lambda: True)
    core.add_waiter(dead)
    core.add_waiter(live)
    core.push(job("jid-wake-001", queue="q"))
    assert got == ["jid-wake-001"]
    assert "jid-wake-001" in core.reservations


def test_return_to_front_puts_job_first_in_line() -> None:
    core = ServerCore()
    core.push(job("jid-first-01"))
    core.push(job("jid-second-1"))
    res = core.fetch(["default"], "w")
    assert res is not None
    core.return_to_front(res)
    assert not core.reservations
    again = core.fetch(["default"], "w")
    assert again is not None
    assert again.jid == "jid-first-01"


def test_retry_backoff_formula_bounds() -> None:
    for count in (0, 1, 5):
        low = count**4 + 15
        high = low + 29 * (count + 1)
        assert all(low <= retry_delay(count) <= high for _ in range(50))


def test_fail_goes_to_retries_then_dead_and_reaper_expires() -> None:
    core = ServerCore()
    core.push(job("jid-retry-01", retry=1))
    assert core.fetch(["default"], "w") is not None
    core.fail("jid-retry-01", "E", "m" * 2000, ["x"] * 80)
    entry = next(iter(core.retries.entries.values()))
    failure = json.loads(entry.data)["failure"]
    assert len(failure["message"]) == 1000
    assert len(failure["backtrace"]) == 50
    assert failure["retry_count"] == 0
    assert failure["remaining"] == 1
    core.clock.advance(15 + 29 + 1)
    core.tick()
    assert len(core.retries) == 0
    assert core.fetch(["default"], "w") is not None
    # Second failure: retry_count 1 == retry 1, so dead.
    core.fail("jid-retry-01", "E", "again", None)
    assert len(core.dead) == 1
    # Reaper: an expired reservation fails with ReservationExpired.
    core.push(job("jid-reaped-1", reserve_for=10))
    assert core.fetch(["default"], "w") is not None
    core.clock.advance(59)
    core.tick()
    assert "jid-reaped-1" in core.reservations  # reserved for 60 s at least
    core.clock.advance(2)
    core.tick()
    assert "jid-reaped-1" not in core.reservations
    data = next(e.data for e in core.retries.entries.values() if e.jid == "jid-reaped-1")
    assert json.loads(data)["failure"]["errtype"] == "ReservationExpired"


def test_dead_jobs_are_kept_180_days() -> None:
    assert DEAD_TTL == 180 * 86400
    core = ServerCore()
    core.push(job("jid-dead-0001", retry=-1))
    assert core.fetch(["default"], "w") is not None
    core.fail("jid-dead-0001", "E", "to dead", None)
    assert len(core.dead) == 1
    core.clock.advance(DEAD_TTL - 60)
    core.tick()
    assert len(core.dead) == 1
    core.clock.advance(120)
    core.tick()
    assert len(core.dead) == 0
    assert core.info()["faktory"]["sets"]["dead"] == 0


def test_scheduled_job_enqueued_when_due() -> None:
    core = ServerCore()
    at = core.clock.now_string()[:4]
    assert at.isdigit()
    future = "2099-01-01T00:00:00Z"
    core.push(job("jid-sched-01", at=future))
    assert len(core.scheduled) == 1
    core.clock.advance(200 * 365 * 86400)
    core.tick()
    res = core.fetch(["default"], "w")
    assert res is not None
    assert json.loads(res.data)["at"] == future


def test_worker_expires_after_silence_and_states_only_move_forward() -> None:
    core = ServerCore()
    s = session(core, wid="w-1")
    assert core.signal_worker("w-1", "terminate")
    assert core.signal_worker("w-1", "quiet")
    assert core.workers["w-1"].state == "terminate"
    reply = s.handle(Command("BEAT", '{"wid":"w-1","rss_kb":512}')).reply
    assert reply == b'$21\r\n{"state":"terminate"}\r\n'
    assert core.workers["w-1"].rss_kb == 512
    core.clock.advance(HEARTBEAT_EXPIRY + 1)
    assert core.tick() == [1]
    assert "w-1" not in core.workers
    assert not core.signal_worker("w-1", "quiet")


def test_quiet_worker_fetch_waits_for_nothing_on_first_connection_only() -> None:
    core = ServerCore()
    first = session(core, wid="w-q", conn_id=1)
    second = session(core, wid="w-q", conn_id=2)
    core.signal_worker("w-q", "quiet")
    core.push(job("jid-quiet-01"))
    outcome = first.handle(Command("FETCH", "default"))
    assert outcome.action == WAIT
    assert first.quiet_fetch
    assert second.handle(Command("FETCH", "default")).reply is not None


def test_session_rules() -> None:
    core = ServerCore()
    s = Session(core, 1)
    assert s.handle(Command("INFO", None)).action == CLOSE
    s = session(core)
    assert s.handle(Command("PUSH", None)).reply == b"-ERR internal error\r\n"
    assert s.handle(Command("QUEUE", None)).reply == b"-ERR internal error\r\n"
    assert s.handle(Command("ACK", "[]")).reply == b"-ERR invalid ACK []\r\n"
    assert s.handle(Command("FAIL", "5")).reply == b"-ERR invalid FAIL 5\r\n"
    assert s.handle(Command("BEAT", '{"wid":5}')).reply == b'-ERR invalid BEAT {"wid":5}\r\n'
    assert s.handle(Command("END", None)).action == CLOSE


def test_password_handshake() -> None:
    core = ServerCore()
    s = Session(core, 1, password="sekrit")
    hi = json.loads(s.greeting()[4:])
    assert 4000 <= hi["i"] < 8096
    assert hi["s"]
    other = Session(core, 2, password="sekrit")
    assert json.loads(other.greeting()[4:])["s"] != hi["s"]  # a salt per connection
    bad = s.handle(Command("HELLO", '{"v":2,"pwdhash":"00"}'))
    assert bad.reply == b"-ERR Invalid password\r\n"
    assert bad.action == CLOSE
    good = password_hash("sekrit", hi["s"], hi["i"])
    s2 = Session(core, 3, password="sekrit")
    s2.salt, s2.iterations = hi["s"], hi["i"]
    ok = s2.handle(Command("HELLO", json.dumps({"v": 2, "pwdhash": good})))
    assert ok.reply == b"+OK\r\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"jid":"jid-12345678","jobtype":"A","args":[],"retry":"x"}',
            "invalid JSON: json: cannot unmarshal string into Go struct field Job.retry "
            "of type int",
        ),
        (
            '{"jid":"jid-12345678","jobtype":"A","args":[],"reserve_for":1.5}',
            "invalid JSON: json: cannot unmarshal number 1.5 into Go struct field Job.reserve_for "
            "of type int",
        ),
        (
            '{"jid":5,"jobtype":"A","args":[]}',
            "invalid JSON: json: cannot unmarshal number into Go struct field Job.jid "
            "of type string",
        ),
        (
            '{"jid":"jid-12345678","jobtype":"A","args":[],"custom":[]}',
            "invalid JSON: json: cannot unmarshal array into Go struct field Job.custom of type "
            "map[string]interface {}",
        ),
        ("[]", "invalid JSON: json: cannot unmarshal array into Go value of type client.Job"),
        ("", "invalid JSON: unexpected end of JSON input"),
        ('{"a":1}x', "invalid JSON: invalid character 'x' after top-level value"),
        ('{"a" 1}', "invalid JSON: invalid character '1' after object key"),
        ('{"a":NaN}', "invalid JSON: invalid character 'N' looking for beginning of value"),
        (
            '{"jid":"jid-12345678","jobtype":"A","args":[],"at":"2020-13-01T00:00:00Z"}',
            "invalid timestamp for 'at': \"2020-13-01T00:00:00Z\": parsing time "
            '"2020-13-01T00:00:00Z": month out of range',
        ),
        (
            '{"jid":"jid-12345678","jobtype":"A","args":[],"at":"2020-01-01T00:00:00"}',
            "invalid timestamp for 'at': \"2020-01-01T00:00:00\": parsing time "
            '"2020-01-01T00:00:00" as "2006-01-02T15:04:05.999999999Z07:00": cannot parse "" as '
            '"Z07:00"',
        ),
    ],
)
def test_go_error_texts(text: str, message: str) -> None:
    with pytest.raises(JobRejected) as info:
        parse_job(text)
    assert str(info.value) == message


def test_numbers_and_nested_keys_are_written_like_go() -> None:
    parsed = parse_job('{"jid":"jid-12345678","jobtype":"A","args":[1.0,1e3,0.5,{"b":1,"a":2}]}')
    assert b'"args":[1,1000,0.5,{"a":2,"b":1}]' in encode_job(parsed)
    assert parsed["retry"] == 25
    assert parsed["queue"] == "default"


def test_mutate_glob_and_filters() -> None:
    rx = glob_to_regex("*ab?[c-d][^x]\\*")
    assert rx.fullmatch("zzabXcy*")
    assert not rx.fullmatch("zzabXcx*")
    core = ServerCore()
    for n, jobtype in enumerate(["A", "B", "A"]):
        core.push(job(f"jid-sched-{n:03d}", jobtype=jobtype, at="2099-01-01T00:00:00Z"))
    core.mutate("kill", "scheduled", {"jobtype": "A"})
    assert len(core.dead) == 2
    assert len(core.scheduled) == 1
    core.mutate("requeue", "dead", {"jids": ["jid-sched-000"], "jobtype": "B"})
    assert len(core.dead) == 1
    assert len(core.queues["default"].jobs) == 1
    core.mutate("discard", "dead", {"regexp": "*sched-002*"})
    assert len(core.dead) == 0
    core.mutate("clear", "scheduled", {"jids": ["nothing"]})
    assert len(core.scheduled) == 0


def test_mutate_checks_the_command_before_the_target() -> None:
    s = session(ServerCore())
    bad_both = s.handle(Command("MUTATE", '{"cmd":"explode","target":"nowhere"}')).reply
    assert bad_both == b"-ERR unknown mutate operation\r\n"
    assert s.handle(Command("MUTATE", None)).reply == b"-ERR invalid format\r\n"
    broken = s.handle(Command("MUTATE", "{x")).reply
    assert broken == b"-ERR invalid character 'x' looking for beginning of object key string\r\n"


def test_fail_texts_are_cleaned_like_faktory() -> None:
    core = ServerCore()
    core.push(job("jid-clean-001", retry=2))
    core.fetch(["default"], "w")
    with pytest.raises(CoreError, match="missing JID"):
        core.fail("", "E", "m", None)
    core.fail("jid-clean-001", "  ", "", None)
    failure = json.loads(next(iter(core.retries.entries.values())).data)["failure"]
    assert failure["errtype"] == "unknown"
    assert failure["message"] == "unknown"
    assert failure["remaining"] == 2


def test_flush_unpauses_every_queue_and_keeps_the_names() -> None:
    """Faktory 1.10.0: a queue paused before FLUSH serves its next job (REFERENCE.md)."""
    core = ServerCore()
    core.push(job("jid-flush-001", queue="held"))
    core.pause(["held"])
    assert core.paused() == ["held"]
    core.flush()
    assert core.paused() == []
    assert core.info()["faktory"]["queues"] == {"held": 0}
    core.push(job("jid-flush-002", queue="held"))
    res = core.fetch(["held"], "w")
    assert res is not None
    assert res.jid == "jid-flush-002"


def test_kaffi_paused_lists_the_paused_queues() -> None:
    core = ServerCore()
    s = session(core)
    for name in ("b", "a", "c"):
        core.push(job(f"jid-pause-{name}01", queue=name))
    core.pause(["c", "a"])
    reply = s.handle(Command("KAFFI", "PAUSED")).reply
    assert reply == b'$9\r\n["a","c"]\r\n'
    core.resume(["*"])
    assert s.handle(Command("KAFFI", "paused")).reply == b"$2\r\n[]\r\n"


def test_fail_texts_are_trimmed_as_go_trims_and_cut_in_bytes() -> None:
    core = ServerCore()
    core.push(job("jid-bytes-0001", retry=2))
    core.fetch(["default"], "w")
    # Go's TrimSpace keeps the \x1c-\x1f separators Python's str.strip() would remove, and
    # removes the no-break space; the message is cut to 1000 bytes, not characters: 600
    # two-byte characters keep 500.
    core.fail("jid-bytes-0001", "\xa0\x1cKeyError\x1f\u3000", "é" * 600, ["x"] * 60)
    failure = json.loads(next(iter(core.retries.entries.values())).data)["failure"]
    assert failure["errtype"] == "\x1cKeyError\x1f"
    assert failure["message"] == "é" * 500
    assert len(failure["backtrace"]) == 50
