"""Payload models: JobPayload creation rules, RFC 3339 handling, wire round-trips, jobs as
a real Faktory 1.10.0 hands them out, and the INFO/HI/HELLO models."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kaffi.errors import RemoteProtocolError, ValidationError
from kaffi.protocol.models import (
    Failure,
    Hello,
    Hi,
    Info,
    JobPayload,
    dumps,
    format_rfc3339,
    new_jid,
    parse_rfc3339,
    validate_queue_name,
)

UTC = timezone.utc

# -- creation ------------------------------------------------------------------------------


def test_create_defaults() -> None:
    job = JobPayload.create(jobtype="SendMail")
    assert job.jobtype == "SendMail"
    assert len(job.jid) >= 8
    assert job.queue == "default"
    assert job.args == []
    assert job.retry == 25
    assert job.reserve_for == 1800
    assert job.priority is None
    assert job.at is None
    assert job.backtrace is None
    assert job.custom is None
    assert (job.created_at, job.enqueued_at, job.failure) == (None, None, None)


def test_default_jids_are_random_and_unique() -> None:
    jids = {JobPayload.create(jobtype="A").jid for _ in range(2000)}
    assert len(jids) == 2000
    assert all(len(jid) >= 8 for jid in jids)
    assert len({new_jid() for _ in range(2000)}) == 2000
    assert all(len(j) == 24 and int(j, 16) >= 0 for j in (new_jid() for _ in range(20)))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"jid": "short", "jobtype": "A"}, "jid"),
        ({"jid": "1234567", "jobtype": "A"}, "jid"),
        ({"jid": "", "jobtype": "A"}, "jid"),
        ({"jid": "\u00e9\u00e9\u00e9", "jobtype": "A"}, "jid"),  # 6 UTF-8 bytes
        ({"jobtype": ""}, "jobtype"),
        ({}, "jobtype"),
        ({"jobtype": 7}, "jobtype"),
        ({"jobtype": "A", "queue": "bad queue!"}, "queue"),
        ({"jobtype": "A", "queue": ""}, "queue"),
        ({"jobtype": "A", "queue": "q\n"}, "queue"),
        ({"jobtype": "A", "queue": "\u00e9t\u00e9"}, "queue"),
        ({"jobtype": "A", "retry": -2}, "retry"),
        ({"jobtype": "A", "reserve_for": 86401}, "reserve_for"),
        ({"jobtype": "A", "backtrace": -1}, "backtrace"),
        ({"jobtype": "A", "at": "tomorrow"}, "at"),
        ({"jobtype": "A", "args": {"a": 1}}, "args"),
        ({"jobtype": "A", "custom": [1]}, "custom"),
    ],
)
def test_create_refuses_invalid_fields_naming_them(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        JobPayload.create(**fields)
    assert info.value.field == field
    assert f"{field}:" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "fields",
    [
        {"jid": "12345678"},
        {"jid": "\u00e9\u00e9\u00e9\u00e9"},  # 4 characters, 8 bytes: Go's len() says 8
        {"retry": -1},
        {"retry": 0},
        {"reserve_for": 60},
        {"reserve_for": 86400},
        # Faktory accepts these and reserves for 60 s at least (REFERENCE.md).
        {"reserve_for": 59},
        {"reserve_for": 30},
        {"reserve_for": 0},
        {"reserve_for": -5},
        {"reserve_for": None},
        {"backtrace": 0},
        {"queue": "a.B-9_z"},
        {"priority": 9},
        {"args": [None, 1.5, {"k": [True]}]},
    ],
)
def test_create_accepts_the_edges(fields: dict[str, Any]) -> None:
    job = JobPayload.create(jobtype="A", **fields)
    for name, value in fields.items():
        assert getattr(job, name) == value


def test_assignment_is_validated_with_kaffi_errors() -> None:
    job = JobPayload.create(jobtype="A")
    job.queue = "critical"
    assert job.queue == "critical"
    with pytest.raises(ValidationError) as info:
        job.queue = "bad queue!"
    assert info.value.field == "queue"
    with pytest.raises(ValidationError) as info:
        job.reserve_for = 90_000
    assert info.value.field == "reserve_for"
    assert job.queue == "critical"
    assert job.reserve_for == 1800
    job.reserve_for = 10
    assert job.reserve_for == 10


def test_args_that_json_cannot_carry_are_a_validation_error() -> None:
    job = JobPayload.create(jobtype="A", args=[object()])
    with pytest.raises(ValidationError, match="JSON"):
        job.to_json()
    with pytest.raises(ValidationError, match="JSON"):
        job.to_wire()


# -- at and RFC 3339 -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        ("2030-01-31T12:00:00Z", "2030-01-31T12:00:00.000000Z"),
        ("2000-01-01T00:00:00+02:00", "1999-12-31T22:00:00.000000Z"),
        ("2030-06-01T08:15:00-05:30", "2030-06-01T13:45:00.000000Z"),
        ("2030-01-31T12:00:00.5Z", "2030-01-31T12:00:00.500000Z"),
        ("2030-01-31T12:00:00.123456789Z", "2030-01-31T12:00:00.123456Z"),
        ("2030-01-31T12:00:00.123456789+01:00", "2030-01-31T11:00:00.123456Z"),
        # Go's RFC3339Nano parser takes any number of fraction digits.
        ("2030-01-31T12:00:00.1234567891234Z", "2030-01-31T12:00:00.123456Z"),
        ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59.000000Z"),
    ],
)
def test_at_accepts_rfc3339_and_sends_utc(text: str, wire: str) -> None:
    job = JobPayload.create(jobtype="A", at=text)
    assert job.to_wire()["at"] == wire
    assert json.loads(job.to_json())["at"] == wire
    assert job.at == parse_rfc3339(text)


@pytest.mark.parametrize(
    "text",
    [
        "tomorrow",
        "2030-01-31",
        "2030-01-31 12:00:00Z",
        "2030-01-31T12:00:00",  # no zone
        "2030-01-31t12:00:00Z",  # Go refuses lowercase t and z
        "2030-01-31T12:00:00z",
        "2030-01-31T12:00Z",
        "2030-01-31T12:00:00.Z",
        "2030-01-31T12:00:00,5Z",
        "2030-01-31T12:00:00+0100",
        "2030-01-31T12:00:00+01",
        "2030-1-31T12:00:00Z",
        "2030-13-01T00:00:00Z",
        "2030-02-30T00:00:00Z",
        "2030-01-31T24:00:00Z",
        "2030-01-31T12:60:00Z",
        "2030-01-31T12:00:60Z",
        "2030-01-31T12:00:00Z ",
        " 2030-01-31T12:00:00Z",
        "\u0662030-01-31T12:00:00Z",  # a non-ASCII digit
    ],
)
def test_at_refuses_what_faktory_refuses(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        JobPayload.create(jobtype="A", at=text)
    assert info.value.field == "at"
    assert "at:" in str(info.value)
    with pytest.raises(ValueError, match=r"RFC 3339|out of range|must be in"):
        parse_rfc3339(text)


def test_empty_at_means_no_at_like_faktory() -> None:
    job = JobPayload.create(jobtype="A", at="")
    assert job.at is None
    assert "at" not in job.to_wire()
    assert JobPayload.from_wire('{"jid":"jid-12345678","jobtype":"A","args":[],"at":""}').at is None
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339("")


def test_at_accepts_aware_and_naive_datetimes() -> None:
    aware = datetime(2030, 1, 31, 12, 0, 0, 250000, tzinfo=timezone(timedelta(hours=-3)))
    job = JobPayload.create(jobtype="A", at=aware)
    assert job.to_wire()["at"] == "2030-01-31T15:00:00.250000Z"

    naive = datetime(2030, 1, 31, 12, 0, 0)
    job = JobPayload.create(jobtype="A", at=naive)
    # A naive datetime means local time, like datetime.now().
    expected = naive.astimezone().astimezone(UTC)
    assert job.to_wire()["at"] == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert job.at is not None
    assert job.at.tzinfo is not None


def test_format_rfc3339() -> None:
    assert format_rfc3339(datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == (
        "2030-01-02T03:04:05.000006Z"
    )
    assert format_rfc3339(datetime(5, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0005-01-02T03:04:05.000000Z"
    value = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=5)))
    assert parse_rfc3339(format_rfc3339(value)) == value


def test_parse_rfc3339_keeps_the_offset() -> None:
    value = parse_rfc3339("2030-01-31T12:00:00-07:00")
    assert value.utcoffset() == timedelta(hours=-7)
    assert value == datetime(2030, 1, 31, 19, 0, tzinfo=UTC)


# -- to_wire / from_wire -------------------------------------------------------------------


def test_to_wire_omits_none_but_keeps_nulls_inside_values() -> None:
    job = JobPayload.create(jid="jid-00000001", jobtype="A")
    assert job.to_wire() == {
        "jid": "jid-00000001",
        "jobtype": "A",
        "queue": "default",
        "args": [],
        "retry": 25,
        "reserve_for": 1800,
    }
    job = JobPayload.create(
        jid="jid-00000001", jobtype="A", args=[None], custom={"k": None}, priority=3
    )
    wire = job.to_wire()
    assert wire["args"] == [None]
    assert wire["custom"] == {"k": None}
    assert wire["priority"] == 3
    assert {"at", "backtrace", "failure", "created_at"}.isdisjoint(wire)
    assert json.loads(job.to_json()) == wire
    assert job.to_json() == json.dumps(wire, separators=(",", ":"))


def test_created_payload_round_trips_through_from_wire() -> None:
    job = JobPayload.create(
        jobtype="A",
        queue="q1",
        args=[1, "two", {"three": 3}],
        retry=-1,
        at="2030-01-31T12:00:00.5Z",
        reserve_for=600,
        backtrace=10,
        custom={"trace": "abc"},
    )
    assert JobPayload.from_wire(job.to_json()) == job
    assert JobPayload.from_wire(job.to_json().encode()) == job
    assert JobPayload.from_wire(job.to_wire()) == job


def test_from_wire_is_lenient_about_what_another_client_may_send() -> None:
    job = JobPayload.from_wire(
        b'{"jid":"short","jobtype":"A","args":[],"reserve_for":10,"retry":-5,'
        b'"backtrace":-1,"unknown":{"x":1},"priority":9}'
    )
    assert (job.jid, job.reserve_for, job.retry, job.backtrace) == ("short", 10, -5, -1)
    assert not hasattr(job, "unknown")
    assert "unknown" not in job.to_wire()
    # The lenient parse yields an ordinary JobPayload: later assignments are strict again.
    assert type(job) is JobPayload
    with pytest.raises(ValidationError, match="reserve_for"):
        job.reserve_for = 86_401
    with pytest.raises(ValidationError, match="jid"):
        job.jid = "short"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b"null",
        b'{"jid":"jid-12345678","args":[]}',
        b'{"jid":"jid-12345678","jobtype":"A","args":{"a":1}}',
        b'{"jid":"jid-12345678","jobtype":"A","args":[],"at":"tomorrow"}',
        b'{"jid":"jid-12345678","jobtype":"A","args":[],"queue":"bad queue!"}',
        b'{"jid":"jid-12345678","jobtype":"A","args":[],"retry":"many"}',
        b'{"jid":"jid-12345678","jobtype":"A","args":[],"failure":"x"}',
        b'{"jid":"jid-12345678","jobtype":"A","args":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"\xff\xfe",
    ],
)
def test_from_wire_garbage_is_a_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        JobPayload.from_wire(data)


# Literal FETCH replies from transcript-faktory-1.10.0.txt, with concrete times put where
# the recording masks them as <time>.
T1 = "2026-11-28T13:38:24.123456789Z"
T2 = "2026-11-28T13:38:24.987654321Z"
TRANSCRIPT_JOBS = {
    "push and fetch": (
        '{"retry":25,"custom":{"k":"v"},"jid":"jid-aaaaaaaa1","queue":"default","jobtype":"A",'
        f'"created_at":"{T1}","enqueued_at":"{T2}","args":[1,"two",{{"three":3}}],'
        '"reserve_for":600}'
    ),
    "priority dropped": (
        '{"retry":25,"jid":"jid-cccccccc1","queue":"q1","jobtype":"A",'
        f'"created_at":"{T1}","enqueued_at":"{T2}","args":[]}}'
    ),
    "scheduled": (
        '{"retry":25,"jid":"jid-eeeeeeee2","queue":"default","jobtype":"A",'
        f'"created_at":"{T1}","enqueued_at":"{T2}","at":"2000-01-01T00:00:00+02:00","args":[]}}'
    ),
    "reserve_for clamp": (
        '{"retry":1,"jid":"jid-hhhhhhhh3","queue":"default","jobtype":"A",'
        f'"created_at":"{T1}","enqueued_at":"{T2}","args":[],"reserve_for":10,"backtrace":5}}'
    ),
}


def test_transcript_jobs_parse() -> None:
    job = JobPayload.from_wire(TRANSCRIPT_JOBS["push and fetch"])
    assert (job.jid, job.jobtype, job.queue, job.retry, job.reserve_for) == (
        "jid-aaaaaaaa1",
        "A",
        "default",
        25,
        600,
    )
    assert job.args == [1, "two", {"three": 3}]
    assert job.custom == {"k": "v"}
    assert job.created_at == datetime(2026, 11, 28, 13, 38, 24, 123456, tzinfo=UTC)
    assert job.enqueued_at == datetime(2026, 11, 28, 13, 38, 24, 987654, tzinfo=UTC)
    assert job.to_wire()["created_at"] == "2026-11-28T13:38:24.123456Z"

    job = JobPayload.from_wire(TRANSCRIPT_JOBS["priority dropped"])
    assert (job.queue, job.priority, job.reserve_for) == ("q1", None, 1800)

    job = JobPayload.from_wire(TRANSCRIPT_JOBS["scheduled"])
    assert job.at == datetime(1999, 12, 31, 22, 0, tzinfo=UTC)

    job = JobPayload.from_wire(TRANSCRIPT_JOBS["reserve_for clamp"])
    assert (job.retry, job.reserve_for, job.backtrace) == (1, 10, 5)


def test_transcript_failure_records_parse() -> None:
    first = JobPayload.from_wire(
        '{"retry":5,"failure":{"failed_at":"2026-11-28T13:38:25.000000001Z",'
        '"next_at":"2026-11-28T13:38:51.5Z","message":"no such key","errtype":"KeyError",'
        '"backtrace":["f.py:1 in g","h.py:2 in k"],"retry_count":0,"remaining":5},'
        '"jid":"jid-iiiiiiii1","queue":"default","jobtype":"A",'
        f'"created_at":"{T1}","enqueued_at":"{T2}","args":["x"]}}'
    )
    assert first.failure == Failure(
        retry_count=0,
        remaining=5,
        failed_at=datetime(2026, 11, 28, 13, 38, 25, tzinfo=UTC),
        next_at=datetime(2026, 11, 28, 13, 38, 51, 500000, tzinfo=UTC),
        message="no such key",
        errtype="KeyError",
        backtrace=["f.py:1 in g", "h.py:2 in k"],
    )
    again = JobPayload.from_wire(
        '{"retry":5,"failure":{"failed_at":"2026-11-28T13:38:25Z",'
        '"next_at":"2026-11-28T13:39:00Z","message":"again","errtype":"KeyError",'
        '"retry_count":1,"remaining":4},"jid":"jid-iiiiiiii1","queue":"default",'
        f'"jobtype":"A","created_at":"{T1}","enqueued_at":"{T2}","args":["x"]}}'
    )
    assert again.failure is not None
    assert (again.failure.retry_count, again.failure.remaining) == (1, 4)
    assert (again.failure.message, again.failure.errtype) == ("again", "KeyError")
    assert again.failure.backtrace is None
    wire = again.to_wire()
    assert wire["failure"]["retry_count"] == 1
    assert "backtrace" not in wire["failure"]


# -- queue names, HI, HELLO, INFO ----------------------------------------------------------


def test_validate_queue_name() -> None:
    assert validate_queue_name("default") == "default"
    for bad in ("", " ", "a b", "a/b", "*", "q\n", None, 3):
        with pytest.raises(ValidationError) as info:
            validate_queue_name(bad, field="queues")
        assert info.value.field == "queues"
        assert str(info.value).startswith("queues:")


def test_hi_and_hello_models() -> None:
    assert Hi.model_validate_json('{"v":2,"i":3,"s":"x","extra":1}') == Hi(v=2, i=3, s="x")
    assert Hello().model_dump(exclude_none=True) == {"v": 2}


def test_info_from_raw_keeps_raw_and_types() -> None:
    raw: dict[str, Any] = {
        "now": "2026-11-28T13:38:24Z",
        "faktory": {
            "queues": {"default": 3},
            "sets": {"dead": 1},
            "tasks": {},
            "total_processed": 10,
            "future_counter": 5,
        },
        "server": {"faktory_version": "1.10.0", "uptime": 4},
        "newer_block": {"x": 1},
    }
    info = Info.from_raw(raw)
    assert info.raw is raw
    assert info.faktory.queues == {"default": 3}
    assert info.faktory.total_processed == 10
    assert info.faktory.total_failures == 0
    assert info.server.faktory_version == "1.10.0"
    assert info.server.uptime == 4
    assert info.raw["newer_block"] == {"x": 1}
    assert Info.from_raw({}).raw == {}
    with pytest.raises(RemoteProtocolError):
        Info.from_raw({"server": {"uptime": "long"}})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused_not_sent_as_null(bad: float) -> None:
    job = JobPayload.create(jobtype="A", args=[1, {"x": [bad]}])
    with pytest.raises(ValidationError, match="NaN and infinite"):
        job.to_json()
    with pytest.raises(ValidationError, match="JSON"):
        dumps({"args": [bad]})


def test_strings_that_spell_nan_still_go_through() -> None:
    job = JobPayload.create(jobtype="A", args=["NaN", "Infinity", 2.5])
    assert json.loads(job.to_json())["args"] == ["NaN", "Infinity", 2.5]


def test_parse_optional_rfc3339_reads_an_empty_time_as_none() -> None:
    from kaffi.protocol.enterprise import Progress
    from kaffi.protocol.rfc3339 import RFC3339Error, parse_optional_rfc3339

    assert parse_optional_rfc3339("") is None
    assert parse_optional_rfc3339(None) is None
    assert parse_optional_rfc3339("2030-01-02T03:04:05Z") == datetime(
        2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc
    )
    when = datetime(2030, 1, 1, tzinfo=timezone.utc)
    assert parse_optional_rfc3339(when) is when
    with pytest.raises(RFC3339Error):
        parse_optional_rfc3339("tomorrow")
    # Both models that read wire times use it: JobPayload's at, Progress's updated_at.
    assert JobPayload.from_wire({"jid": "a" * 12, "jobtype": "x", "args": [], "at": ""}).at is None
    unknown = {"jid": "j", "state": "unknown", "updated_at": ""}
    assert Progress.model_validate(unknown).updated_at is None
    working = {"jid": "j", "state": "working", "updated_at": "2030-01-01T00:00:00Z"}
    assert Progress.model_validate(working).updated_at == when
