"""JobPayload.from_wire's own validator (no call into Python for an ordinary job) against
the model's validator: the same jobs, the same refusals, the same messages."""

from __future__ import annotations

import json
import sys
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError as PydanticValidationError

from kaffi.errors import RemoteProtocolError
from kaffi.protocol import models
from kaffi.protocol.commands import decode_fetch
from kaffi.protocol.models import JobPayload, validation_message
from kaffi.protocol.resp import BulkReply

PROPERTY_SETTINGS = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def full_path(data: bytes | str | dict[str, Any]) -> JobPayload | str:
    """What the model's own validator makes of ``data`` in the lenient context: the job,
    or the message from_wire must raise."""
    validator = JobPayload.__pydantic_validator__
    try:
        if isinstance(data, dict):
            job = validator.validate_python(data, context={"lenient": True})
        else:
            job = validator.validate_json(data, context={"lenient": True})
    except PydanticValidationError as exc:
        return validation_message(exc, "server sent a bad job: ")
    assert isinstance(job, JobPayload)
    return job


def wire_path(data: bytes | str | dict[str, Any]) -> JobPayload | str:
    try:
        return JobPayload.from_wire(data)
    except RemoteProtocolError as exc:
        return str(exc)


def same(data: bytes | str | dict[str, Any]) -> None:
    expected = full_path(data)
    got = wire_path(data)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert isinstance(got, JobPayload)
        assert got.model_fields_set == expected.model_fields_set
        if "jid" not in expected.model_fields_set:
            # No jid sent: each path draws a fresh one; everything else must agree.
            assert len(got.jid) == len(expected.jid) == 24
            assert got.jid != expected.jid
            got = got.model_copy(update={"jid": expected.jid})
        assert got == expected
        assert repr(got) == repr(expected)


def test_the_wire_validator_is_not_the_models_own() -> None:
    # pydantic-core hands back a finished model's own validator for any schema naming the
    # model's class; the wire validator must have escaped that, or it gains nothing.
    assert models._WIRE_VALIDATOR is not JobPayload.__pydantic_validator__
    assert JobPayload.__pydantic_complete__ is True


def test_an_ordinary_job_is_decoded_without_calling_python() -> None:
    data = (
        b'{"jid":"b1234567812345678","jobtype":"noop","queue":"q","args":[1,"x"],"retry":25,'
        b'"created_at":"2026-11-28T16:34:41.123456Z","enqueued_at":"2026-11-28T16:34:41.1Z",'
        b'"reserve_for":1800,"custom":{"k":"v"}}'
    )
    called: list[str] = []

    def spy(frame: FrameType, event: str, arg: object) -> None:
        if event == "call":
            called.append(frame.f_code.co_name)

    sys.setprofile(spy)
    try:
        job = JobPayload.from_wire(data)
    finally:
        sys.setprofile(None)
    assert called == ["from_wire"]
    assert (job.jid, job.jobtype, job.queue, job.args) == (
        "b1234567812345678",
        "noop",
        "q",
        [1, "x"],
    )


@pytest.mark.parametrize(
    "doc",
    [
        {"jid": "jid-12345678", "jobtype": "A", "args": []},
        {"jid": "x", "jobtype": "A", "args": [], "retry": -7, "reserve_for": 10, "backtrace": -1},
        {"jid": "jid-12345678", "jobtype": "A", "queue": "a.b_c-D9"},
        {"jid": "jid-12345678", "jobtype": "", "args": []},
        {"jid": "jid-12345678", "jobtype": "A", "queue": ""},
        {"jid": "jid-12345678", "jobtype": "A", "queue": "q\n"},
        {"jid": "jid-12345678", "jobtype": "A", "queue": "\nq"},
        {"jid": "jid-12345678", "jobtype": "A", "queue": "qé"},
        {"jid": "jid-12345678", "jobtype": "A", "queue": "bad queue!"},
        {"jid": "jid-12345678", "jobtype": "", "queue": "bad queue!", "retry": "x"},
        {"jid": "jid-12345678", "jobtype": 5},
        {"jid": "jid-12345678", "jobtype": None},
        {"jid": "jid-12345678", "jobtype": "A", "queue": None},
        {"jid": "jid-12345678", "jobtype": "A", "queue": 7},
        {"jid": "jid-12345678", "jobtype": "A", "retry": "25", "reserve_for": "60"},
        {"jid": "jid-12345678", "jobtype": "A", "at": ""},
        {"jid": "jid-12345678", "jobtype": "A", "at": "2030-01-31T12:00:00Z"},
        {"jid": "jid-12345678", "jobtype": "A", "at": "tomorrow"},
        {"jid": "jid-12345678", "jobtype": "A", "failure": {"retry_count": 2, "errtype": "E"}},
        {"jid": "jid-12345678", "jobtype": "A", "failure": "x"},
        {"jid": "jid-12345678", "jobtype": "A", "unknown": 1, "priority": 5},
        {"jobtype": "A"},
        {"jid": 12345678, "jobtype": "A"},
        {},
    ],
)
def test_wire_decoding_matches_the_model(doc: dict[str, Any]) -> None:
    same(doc)
    same(json.dumps(doc))
    same(json.dumps(doc).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b"null", b"\xff\xfe", "{"])
def test_wire_refuses_garbage_as_the_model_does(data: bytes | str) -> None:
    same(data)


queue_text = st.one_of(
    st.text(st.sampled_from("abcXYZ019._-"), max_size=6),
    st.text(max_size=6),
    st.sampled_from(["default", "q\n", "\n", "a b", "é", "\uff21", "\u0663", "q\x00"]),
)
json_scalar = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=5)
job_docs = st.fixed_dictionaries(
    {"jobtype": st.one_of(st.text(max_size=4), json_scalar)},
    optional={
        "jid": st.one_of(st.text(max_size=12), json_scalar),
        "queue": st.one_of(queue_text, json_scalar),
        "args": st.one_of(st.lists(json_scalar, max_size=3), json_scalar),
        "retry": json_scalar,
        "reserve_for": json_scalar,
        "backtrace": json_scalar,
        "priority": json_scalar,
        "custom": st.one_of(st.dictionaries(st.text(max_size=3), json_scalar, max_size=2)),
        "at": st.sampled_from(["", "2030-01-31T12:00:00Z", "2030-01-31T12:00:00.5+02:00", "x"]),
        "created_at": st.sampled_from(["2026-11-28T16:34:41.123456789Z", "nope", ""]),
    },
)


@PROPERTY_SETTINGS
@given(job_docs)
def test_any_job_document_decodes_as_the_model_decodes_it(doc: dict[str, Any]) -> None:
    same(doc)
    same(json.dumps(doc))


def test_decode_fetch_uses_the_wire_path() -> None:
    data = b'{"jid":"jid-12345678","jobtype":"A","args":[],"reserve_for":10}'
    job = decode_fetch(BulkReply(data))
    assert job == full_path(data)
    assert job is not None
    assert job.reserve_for == 10
    with pytest.raises(RemoteProtocolError, match="jobtype: jobtype must not be empty"):
        decode_fetch(BulkReply(b'{"jid":"jid-12345678","jobtype":""}'))
