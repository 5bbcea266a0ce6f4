"""EncodedJob and the byte encoders: a job checked once is sent as it was encoded, and
anything unusual takes the full path with the full path's errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kaffi.errors import ValidationError
from kaffi.protocol.commands import decode_pushb, encode_push, encode_pushb
from kaffi.protocol.models import EncodedJob, JobPayload
from kaffi.protocol.resp import BulkReply


def checked(**fields: Any) -> dict[str, Any]:
    """A job dict as a task builds it: a validated payload's wire form."""
    return JobPayload.create(jid="jid-encoded-01", jobtype="A", **fields).to_wire()


def test_from_checked_sends_the_dict_as_json() -> None:
    job = checked(args=[1, "two", {"three": 3.5}, None], custom={"k": "\u2615 \n"})
    encoded = EncodedJob.from_checked(job)
    assert encoded.jid == "jid-encoded-01"
    assert json.loads(encoded.data) == job
    assert encoded.to_wire() == job
    assert encode_push(encoded) == b"PUSH " + encoded.data + b"\r\n"
    assert encode_push(encoded).count(b"\n") == 1
    assert "jid-encoded-01" in repr(encoded)


def test_payload_bytes_are_the_json_text() -> None:
    payload = JobPayload.create(jid="jid-encoded-01", jobtype="A", args=["\u2615", "a\nb"])
    assert payload.to_json_bytes() == payload.to_json().encode("utf-8")
    assert encode_push(payload) == b"PUSH " + payload.to_json_bytes() + b"\r\n"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [float("-inf")]])
def test_non_finite_values_fail_as_on_the_full_path(bad: Any) -> None:
    job = checked()
    job["args"] = [bad]
    with pytest.raises(ValidationError, match="NaN and infinite numbers are not JSON"):
        EncodedJob.from_checked(job)


def test_a_string_that_merely_says_nan_is_kept() -> None:
    job = checked(args=["NaN", "Infinity"])
    assert json.loads(EncodedJob.from_checked(job).data)["args"] == ["NaN", "Infinity"]


def test_lone_surrogates_fail_as_on_the_full_path() -> None:
    job = checked()
    job["args"] = ["\ud800"]
    with pytest.raises(ValidationError, match="cannot be sent as JSON"):
        EncodedJob.from_checked(job)


def test_a_dict_without_a_jid_is_validated() -> None:
    with pytest.raises(ValidationError, match="jobtype"):
        EncodedJob.from_checked({"jobtype": ""})
    encoded = EncodedJob.from_checked({"jobtype": "A"})
    assert len(encoded.jid) == 24


def test_pushb_of_encoded_and_payloads_and_its_rejections() -> None:
    encoded = EncodedJob.from_checked(checked(args=[1]))
    payload = JobPayload.create(jid="jid-model-0001", jobtype="B")
    line = encode_pushb([encoded, payload])
    assert line == b"PUSHB [" + encoded.data + b"," + payload.to_json_bytes() + b"]\r\n"
    reply = BulkReply(b'{"jid-encoded-01":"no","jid-model-0001":"nor"}')
    rejected = decode_pushb(reply, [encoded, payload])
    assert [(r.jid, r.reason) for r in rejected] == [
        ("jid-encoded-01", "no"),
        ("jid-model-0001", "nor"),
    ]
    assert rejected[0].payload == encoded.to_wire()
    assert rejected[1].payload == payload.to_wire()


def test_pushb_of_payloads_refuses_non_finite_numbers_naming_the_job() -> None:
    good = JobPayload.create(jid="jid-good-00001", jobtype="A")
    bad = JobPayload.create(jid="jid-bad-000001", jobtype="A", args=[float("nan")])
    with pytest.raises(ValidationError, match="jid-bad-000001 cannot be sent as JSON"):
        encode_pushb([good, bad])
    text = JobPayload.create(jid="jid-text-00001", jobtype="A", args=["NaN"])
    assert json.loads(encode_pushb([good, text])[6:])[1]["args"] == ["NaN"]
