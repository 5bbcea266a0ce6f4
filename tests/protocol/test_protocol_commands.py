"""Every command encoder's exact bytes, password_hash, and every reply decoder.

Lines marked "transcript" are copied from ../shared/faktory/transcript-faktory-1.10.0.txt:
what a real Faktory 1.10.0 received or sent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaffi.errors import (
    AuthenticationError,
    KaffiError,
    LocalProtocolError,
    NotUnique,
    RemoteProtocolError,
    ServerError,
    ValidationError,
)
from kaffi.protocol.commands import (
    decode_beat,
    decode_fetch,
    decode_hi,
    decode_info,
    decode_json,
    decode_latency,
    decode_ok,
    decode_pushb,
    encode_ack,
    encode_batch,
    encode_beat,
    encode_end,
    encode_fail,
    encode_fetch,
    encode_flush,
    encode_hello,
    encode_info,
    encode_line,
    encode_mutate,
    encode_push,
    encode_pushb,
    encode_queue,
    encode_track,
    password_hash,
    raise_for_error,
)
from kaffi.protocol.models import Hi, Info, JobPayload, RejectedJob
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply, SimpleReply


def json_arg(line: bytes, verb: bytes) -> Any:
    assert line.startswith(verb + b" ")
    assert line.endswith(b"\r\n")
    return json.loads(line[len(verb) + 1 : -2])


# -- encode_line ---------------------------------------------------------------------------


def test_encode_line() -> None:
    assert encode_line("INFO") == b"INFO\r\n"
    assert encode_line("PUSH", "{}") == b"PUSH {}\r\n"
    assert encode_line("X", "") == b"X \r\n"
    assert encode_line("X", "caf\u00e9") == b"X caf\xc3\xa9\r\n"


@pytest.mark.parametrize(
    ("verb", "arg"),
    [
        ("", None),
        ("TWO WORDS", None),
        ("V\r\n", None),
        ("V\n", None),
        ("V\u00e9", None),
        ("PUSH", "a\nb"),
        ("PUSH", "a\rb"),
        ("PUSH", "a\r\nINFO"),
        ("PUSH", "\udcff"),
    ],
)
def test_encode_line_refuses_what_would_break_the_framing(verb: str, arg: str | None) -> None:
    with pytest.raises(LocalProtocolError):
        encode_line(verb, arg)


# -- handshake -----------------------------------------------------------------------------


def reference_pwdhash(password: str, salt: str, iterations: int) -> str:
    # Written from REFERENCE.md, independently of kaffi: sha256(password + salt) as raw
    # bytes, then sha256 of the digest until `iterations` rounds in all; lowercase hex.
    data = (password + salt).encode()
    for _ in range(iterations):
        data = hashlib.sha256(data).digest()
    return data.hex()


@pytest.mark.parametrize("iterations", [1, 2, 3, 10, 1545, 5000])
def test_password_hash_matches_the_reference(iterations: int) -> None:
    got = password_hash("s3cr\u00e9t", "8a1c2f4e", iterations)
    assert got == reference_pwdhash("s3cr\u00e9t", "8a1c2f4e", iterations)
    assert len(got) == 64
    assert got == got.lower()


def test_password_hash_one_round_is_plain_sha256() -> None:
    assert password_hash("pw", "salt", 1) == hashlib.sha256(b"pwsalt").hexdigest()
    assert (
        password_hash("pw", "salt", 2)
        == hashlib.sha256(hashlib.sha256(b"pwsalt").digest()).hexdigest()
    )
    assert password_hash("pw", "salt", 2) != password_hash("pw", "salt", 1)


def test_password_hash_refuses_zero_iterations() -> None:
    with pytest.raises(RemoteProtocolError):
        password_hash("pw", "salt", 0)


def test_decode_hi() -> None:
    hi = decode_hi(SimpleReply('HI {"v":2}'))  # transcript
    assert (hi.v, hi.i, hi.s, hi.needs_password) == (2, None, None, False)
    hi = decode_hi(SimpleReply('HI {"v":2,"i":5545,"s":"5d93fe2ee98c6da1"}'))
    assert (hi.v, hi.i, hi.s, hi.needs_password) == (2, 5545, "5d93fe2ee98c6da1", True)


@pytest.mark.parametrize(
    "reply",
    [
        SimpleReply("OK"),
        SimpleReply("HI"),
        SimpleReply("HI not json"),
        SimpleReply('HI {"v":1}'),
        SimpleReply('HI {"v":"two"}'),
        SimpleReply("HI []"),
        BulkReply(b'HI {"v":2}'),
        BulkReply(None),
    ],
)
def test_decode_hi_refuses_anything_else(reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_hi(reply)


def test_decode_hi_error_reply_is_a_server_error() -> None:
    with pytest.raises(ServerError) as info:
        decode_hi(ErrorReply("ERR", "too many connections: 2001"))
    assert info.value.message == "too many connections: 2001"
    assert not isinstance(info.value, AuthenticationError)


def test_hello_without_wid_is_a_producer_without_pid_or_labels() -> None:
    line = encode_hello(Hi(v=2), hostname="web-1", pid=4242, labels=["python"])
    assert line == b'HELLO {"v":2,"hostname":"web-1"}\r\n'
    assert encode_hello(Hi(v=2)) == b'HELLO {"v":2}\r\n'


def test_hello_with_wid() -> None:
    line = encode_hello(
        Hi(v=2), hostname="web-1", wid="w-1a2b3c", pid=4242, labels=["python", "kaffi"]
    )
    assert line == (
        b'HELLO {"v":2,"hostname":"web-1","wid":"w-1a2b3c","pid":4242,'
        b'"labels":["python","kaffi"]}\r\n'
    )


def test_hello_with_password() -> None:
    hi = decode_hi(SimpleReply('HI {"v":2,"i":7,"s":"abc123"}'))
    line = encode_hello(hi, hostname="h", wid="w1", pid=1, labels=[], password="hunter2")
    expected = reference_pwdhash("hunter2", "abc123", 7)
    assert line == (
        b'HELLO {"v":2,"hostname":"h","wid":"w1","pid":1,"labels":[],"pwdhash":"'
        + expected.encode()
        + b'"}\r\n'
    )
    assert json_arg(line, b"HELLO")["pwdhash"] == expected


def test_hello_password_without_iterations_hashes_once() -> None:
    line = encode_hello(Hi(v=2, s="salty"), password="pw")
    assert json_arg(line, b"HELLO") == {"v": 2, "pwdhash": reference_pwdhash("pw", "salty", 1)}


def test_hello_ignores_a_password_the_server_does_not_ask_for() -> None:
    assert encode_hello(Hi(v=2), password="pw") == b'HELLO {"v":2}\r\n'


def test_hello_without_the_password_the_server_asks_for() -> None:
    with pytest.raises(AuthenticationError, match="password"):
        encode_hello(Hi(v=2, i=1, s="salt"))


# -- jobs ----------------------------------------------------------------------------------


def test_push_of_a_mapping_is_sent_as_given() -> None:  # transcript
    job = {
        "jid": "jid-aaaaaaaa1",
        "jobtype": "A",
        "args": [1, "two", {"three": 3}],
        "custom": {"k": "v"},
        "reserve_for": 600,
    }
    assert encode_push(job) == (
        b'PUSH {"jid":"jid-aaaaaaaa1","jobtype":"A","args":[1,"two",{"three":3}],'
        b'"custom":{"k":"v"},"reserve_for":600}\r\n'
    )


def test_push_of_a_payload() -> None:
    job = JobPayload.create(
        jid="jid-aaaaaaaa1",
        jobtype="A",
        args=[1, "two", {"three": 3}],
        custom={"k": "v"},
        reserve_for=600,
        at="2099-01-01T00:00:00Z",
    )
    assert encode_push(job) == (
        b'PUSH {"jid":"jid-aaaaaaaa1","jobtype":"A","queue":"default",'
        b'"args":[1,"two",{"three":3}],"retry":25,"at":"2099-01-01T00:00:00.000000Z",'
        b'"reserve_for":600,"custom":{"k":"v"}}\r\n'
    )


def test_push_keeps_line_breaks_and_unicode_inside_json() -> None:
    job = JobPayload.create(jid="jid-aaaaaaaa1", jobtype="A", args=["two\nlines\r", "\u2615"])
    line = encode_push(job)
    assert line.count(b"\n") == 1
    assert json_arg(line, b"PUSH")["args"] == ["two\nlines\r", "\u2615"]


def test_pushb() -> None:
    jobs: list[JobPayload | dict[str, Any]] = [
        {"jid": "jid-ffffffff1", "jobtype": "A", "args": []},
        JobPayload.create(jid="jid-ffffffff2", jobtype="B", retry=3, reserve_for=None),
    ]
    assert encode_pushb(jobs) == (
        b'PUSHB [{"jid":"jid-ffffffff1","jobtype":"A","args":[]},'
        b'{"jid":"jid-ffffffff2","jobtype":"B","queue":"default","args":[],"retry":3}]\r\n'
    )
    assert encode_pushb([]) == b"PUSHB []\r\n"
    assert encode_pushb(iter(jobs)) == encode_pushb(jobs)


def test_fetch() -> None:
    assert encode_fetch("default") == b"FETCH default\r\n"
    assert encode_fetch("high", "low") == b"FETCH high low\r\n"  # transcript
    assert encode_fetch("a.b", "c_d", "E-9") == b"FETCH a.b c_d E-9\r\n"


@pytest.mark.parametrize("queues", [(), ("bad queue!",), ("ok", ""), ("*",), ("a\nb",)])
def test_fetch_refuses_bad_queues(queues: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        encode_fetch(*queues)
    assert info.value.field == "queues"
    assert "queue" in str(info.value)


def test_ack() -> None:
    assert encode_ack("jid-aaaaaaaa1") == b'ACK {"jid":"jid-aaaaaaaa1"}\r\n'  # transcript


def test_fail() -> None:  # transcript
    line = encode_fail("jid-dddddddd1", "ValueError", "boom", ["a.py:1", "b.py:2"])
    assert line == (
        b'FAIL {"jid":"jid-dddddddd1","errtype":"ValueError","message":"boom",'
        b'"backtrace":["a.py:1","b.py:2"]}\r\n'
    )
    assert encode_fail("jid-unknown-xx", "E", "m") == (
        b'FAIL {"jid":"jid-unknown-xx","errtype":"E","message":"m"}\r\n'
    )
    assert encode_fail("jid-unknown-xx", "E", "m", []) == encode_fail("jid-unknown-xx", "E", "m")


def test_fail_cuts_to_what_the_server_keeps() -> None:
    errtype = "E" * 150
    message = "m" * 999 + "\u00e9" + "x" * 500
    backtrace = [f"file{i}.py:{i}" for i in range(80)]
    body = json_arg(encode_fail("jid-12345678", errtype, message, backtrace), b"FAIL")
    assert body["errtype"] == "E" * 100
    assert body["message"] == "m" * 999 + "\u00e9"
    assert len(body["message"]) == 1000
    assert body["backtrace"] == backtrace[:50]


def test_fail_at_the_limits_is_unchanged() -> None:
    body = json_arg(encode_fail("jid-12345678", "E" * 100, "m" * 1000, ["l"] * 50), b"FAIL")
    assert (len(body["errtype"]), len(body["message"]), len(body["backtrace"])) == (100, 1000, 50)


def test_fail_trims_whitespace_before_cutting_like_faktory() -> None:
    # Faktory runs strings.TrimSpace first and then keeps 1000: leading blanks must not
    # eat into the kept message.
    message = "\n  \t" + "x" * 1000 + "  \n"
    body = json_arg(encode_fail("jid-12345678", "  KeyError\n", message), b"FAIL")
    assert body["errtype"] == "KeyError"
    assert body["message"] == "x" * 1000


def test_fail_backtrace_lines_keep_their_indentation() -> None:
    body = json_arg(encode_fail("jid-12345678", "E", "m", ["  File 'a.py'", "    x()"]), b"FAIL")
    assert body["backtrace"] == ["  File 'a.py'", "    x()"]


def test_fail_with_undecodable_text_still_encodes() -> None:
    # str(exc) for an OSError on a surrogateescape-decoded file name holds lone surrogates.
    line = encode_fail(
        "jid-12345678", "FileNotFoundError", "no such file: '\udcff.txt'", ["\udcfe"]
    )
    body = json_arg(line, b"FAIL")
    assert body["message"] == "no such file: '\ufffd.txt'"
    assert body["backtrace"] == ["\ufffd"]


def test_beat() -> None:  # transcript
    assert encode_beat("w-record-1") == b'BEAT {"wid":"w-record-1"}\r\n'
    assert encode_beat("w-record-1", "quiet", 1000) == (
        b'BEAT {"wid":"w-record-1","current_state":"quiet","rss_kb":1000}\r\n'
    )
    assert encode_beat("w", "terminate") == b'BEAT {"wid":"w","current_state":"terminate"}\r\n'
    assert encode_beat("w", rss_kb=52_000) == b'BEAT {"wid":"w","rss_kb":52000}\r\n'


@pytest.mark.parametrize("state", ["running", "QUIET", "", "stopped"])
def test_beat_refuses_unknown_states(state: str) -> None:
    with pytest.raises(ValidationError) as info:
        encode_beat("w", state)
    assert info.value.field == "current_state"


def test_info_flush_end() -> None:
    assert encode_info() == b"INFO\r\n"
    assert encode_flush() == b"FLUSH\r\n"
    assert encode_end() == b"END\r\n"


# -- MUTATE --------------------------------------------------------------------------------


def test_mutate() -> None:  # transcript
    assert encode_mutate("kill", "retries", jobtype="A") == (
        b'MUTATE {"cmd":"kill","target":"retries","filter":{"jobtype":"A"}}\r\n'
    )
    assert encode_mutate("requeue", "dead", jids=["jid-dddddddd2"]) == (
        b'MUTATE {"cmd":"requeue","target":"dead","filter":{"jids":["jid-dddddddd2"]}}\r\n'
    )
    assert encode_mutate("discard", "scheduled", regexp="*eeeeeeee1*") == (
        b'MUTATE {"cmd":"discard","target":"scheduled","filter":{"regexp":"*eeeeeeee1*"}}\r\n'
    )
    assert encode_mutate("clear", "dead") == b'MUTATE {"cmd":"clear","target":"dead"}\r\n'
    assert encode_mutate("kill", "retries", jobtype="A", jids=["j1", "j2"], regexp="*x*") == (
        b'MUTATE {"cmd":"kill","target":"retries",'
        b'"filter":{"jobtype":"A","jids":["j1","j2"],"regexp":"*x*"}}\r\n'
    )


def test_mutate_escapes_spaces_inside_strings() -> None:
    line = encode_mutate("discard", "retries", jobtype="Send Mail", regexp='*a "b" \\ c*')
    assert line == (
        b'MUTATE {"cmd":"discard","target":"retries","filter":{"jobtype":"Send\\u0020Mail",'
        b'"regexp":"*a\\u0020\\"b\\"\\u0020\\\\\\u0020c*"}}\r\n'
    )
    assert line.count(b" ") == 1  # only the one after the verb: Faktory splits on spaces
    assert json_arg(line, b"MUTATE")["filter"] == {
        "jobtype": "Send Mail",
        "regexp": '*a "b" \\ c*',
    }


filter_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["clear", "kill", "discard", "requeue"]),
    st.sampled_from(["retries", "scheduled", "dead"]),
    st.none() | filter_text,
    st.none() | st.lists(filter_text, min_size=1, max_size=4),
    st.none() | filter_text,
)
def test_mutate_json_has_no_spaces_and_decodes_to_the_original(
    cmd: str, target: str, jobtype: str | None, jids: list[str] | None, regexp: str | None
) -> None:
    line = encode_mutate(cmd, target, jobtype=jobtype, jids=jids, regexp=regexp)
    assert line.count(b" ") == 1
    assert line.count(b"\n") == 1
    assert line.endswith(b"\r\n")
    doc = json_arg(line, b"MUTATE")
    expected_filter = {
        key: value
        for key, value in (("jobtype", jobtype), ("jids", jids), ("regexp", regexp))
        if value is not None
    }
    expected: dict[str, Any] = {"cmd": cmd, "target": target}
    if expected_filter:
        expected["filter"] = expected_filter
    assert doc == expected


@pytest.mark.parametrize(
    ("cmd", "target", "field"),
    [("explode", "dead", "cmd"), ("KILL", "dead", "cmd"), ("kill", "nowhere", "target")],
)
def test_mutate_refuses_bad_cmd_and_target(cmd: str, target: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        encode_mutate(cmd, target)
    assert info.value.field == field
    assert repr(cmd if field == "cmd" else target) in str(info.value)


# -- QUEUE, BATCH, TRACK -------------------------------------------------------------------


def test_queue() -> None:  # transcript
    assert encode_queue("PAUSE", "default") == b"QUEUE PAUSE default\r\n"
    assert encode_queue("RESUME", "default") == b"QUEUE RESUME default\r\n"
    assert encode_queue("REMOVE", "default") == b"QUEUE REMOVE default\r\n"
    assert encode_queue("LATENCY", "default") == b"QUEUE LATENCY default\r\n"
    assert encode_queue("pause", "a", "b") == b"QUEUE PAUSE a b\r\n"
    assert encode_queue("latency", "a", "b.c") == b"QUEUE LATENCY a b.c\r\n"


@pytest.mark.parametrize("sub", ["PAUSE", "RESUME", "REMOVE"])
def test_queue_wildcard(sub: str) -> None:
    assert encode_queue(sub, "*") == f"QUEUE {sub} *\r\n".encode()


@pytest.mark.parametrize(
    ("sub", "names", "field"),
    [
        ("LATENCY", ("*",), "queues"),
        ("LATENCY", ("a", "*"), "queues"),
        ("PAUSE", (), "queues"),
        ("PAUSE", ("bad queue!",), "queues"),
        ("REMOVE", ("**",), "queues"),
        ("EXPLODE", ("x",), "subcommand"),
    ],
)
def test_queue_refusals(sub: str, names: tuple[str, ...], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        encode_queue(sub, *names)
    assert info.value.field == field


def test_batch_and_track() -> None:  # transcript
    assert encode_batch("NEW", {"description": "x"}) == b'BATCH NEW {"description":"x"}\r\n'
    assert encode_batch("new", '{"description":"x"}') == b'BATCH NEW {"description":"x"}\r\n'
    assert encode_batch("open", "b-123") == b"BATCH OPEN b-123\r\n"
    assert encode_batch("COMMIT", "b-123") == b"BATCH COMMIT b-123\r\n"
    assert encode_batch("status", "b-123") == b"BATCH STATUS b-123\r\n"
    assert encode_track("GET", "jid-aaaaaaaa1") == b"TRACK GET jid-aaaaaaaa1\r\n"
    assert encode_track("set", {"jid": "j", "percent": 50, "desc": "half"}) == (
        b'TRACK SET {"jid":"j","percent":50,"desc":"half"}\r\n'
    )


@pytest.mark.parametrize("encode", [encode_batch, encode_track])
@pytest.mark.parametrize("sub", ["", "NEW OPEN", "GET\r\n", "N3W"])
def test_batch_and_track_refuse_bad_subcommands(
    encode: Callable[[str, str], bytes], sub: str
) -> None:
    with pytest.raises(ValidationError) as info:
        encode(sub, "x")
    assert info.value.field == "subcommand"


def test_batch_argument_cannot_break_the_line() -> None:
    with pytest.raises(LocalProtocolError):
        encode_batch("OPEN", "b\r\nFLUSH")


# -- decoders ------------------------------------------------------------------------------


def test_decode_ok_takes_exactly_plus_ok() -> None:
    decode_ok(SimpleReply("OK"))  # raises nothing: +OK is the answer
    decode_ok(SimpleReply("OK"), "PUSH")
    with pytest.raises(RemoteProtocolError, match=r"expected \+OK to PUSH, got"):
        decode_ok(SimpleReply("ok"), "PUSH")


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (ErrorReply("ERR", "jobs must have a jobtype parameter"), "ERR"),
        (ErrorReply("NOTUNIQUE", "Job has already been enqueued"), "NOTUNIQUE"),
        (ErrorReply("ERR", ""), "ERR"),
        (
            ErrorReply(
                "ERR",
                'cannot get "bad queue!" queue: queue names must match \\A[a-zA-Z0-9._-]+\\z',
            ),
            "ERR",
        ),
    ],
)
def test_decode_ok_error_reply_carries_code_and_exact_text(reply: ErrorReply, code: str) -> None:
    with pytest.raises(ServerError) as info:
        decode_ok(reply, "PUSH")
    # A duplicate of a unique job is the one coded error with a class of its own.
    assert type(info.value) is (NotUnique if code == "NOTUNIQUE" else ServerError)
    assert info.value.code == code
    assert info.value.message == reply.message
    assert info.value.command == "PUSH"
    assert f"-{code} {reply.message}" in str(info.value)


def test_invalid_password_is_an_authentication_error() -> None:
    with pytest.raises(AuthenticationError) as info:
        decode_ok(ErrorReply("ERR", "Invalid password"), "HELLO")
    assert isinstance(info.value, ServerError)
    assert info.value.code == "ERR"
    assert info.value.message == "Invalid password"
    assert "password" in str(info.value)
    with pytest.raises(AuthenticationError):
        raise_for_error(ErrorReply("ERR", "Invalid password"))


@pytest.mark.parametrize(
    "reply", [SimpleReply("QUEUED"), SimpleReply(""), BulkReply(b"OK"), BulkReply(None)]
)
def test_decode_ok_refuses_other_reply_kinds(reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_ok(reply, "ACK")


def test_decode_json() -> None:
    assert decode_json(BulkReply(b'{"a":[1,2.5,null]}')) == {"a": [1, 2.5, None]}
    assert decode_json(BulkReply(b"{}")) == {}
    assert decode_json(BulkReply(None)) is None


@pytest.mark.parametrize(
    "reply",
    [
        BulkReply(b"{not json"),
        BulkReply(b""),
        BulkReply(b'"\xff"'),
        BulkReply(b"[" * 100_000 + b"]" * 100_000),
        SimpleReply("OK"),
        SimpleReply("{}"),
    ],
    ids=["broken", "empty", "bad-utf8", "deep", "simple-ok", "simple-json"],
)
def test_decode_json_refuses_bad_replies(reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_json(reply, "INFO")


def test_decode_json_error_reply() -> None:
    with pytest.raises(ServerError) as info:
        decode_json(ErrorReply("ERR", "boom"), "INFO")
    assert (info.value.code, info.value.message, info.value.command) == ("ERR", "boom", "INFO")


FETCHED = (  # transcript, times filled in
    b'{"retry":25,"custom":{"k":"v"},"jid":"jid-aaaaaaaa1","queue":"default","jobtype":"A",'
    b'"created_at":"2026-11-28T13:38:24.123456789Z","enqueued_at":"2026-11-28T13:38:24.123987654Z",'
    b'"args":[1,"two",{"three":3}],"reserve_for":600}'
)


def test_decode_fetch() -> None:
    job = decode_fetch(BulkReply(FETCHED))
    assert isinstance(job, JobPayload)
    assert (job.jid, job.jobtype, job.queue, job.retry, job.reserve_for) == (
        "jid-aaaaaaaa1",
        "A",
        "default",
        25,
        600,
    )
    assert job.args == [1, "two", {"three": 3}]
    assert job.custom == {"k": "v"}
    assert decode_fetch(BulkReply(None)) is None


def test_decode_fetch_errors() -> None:
    with pytest.raises(ServerError) as info:
        decode_fetch(ErrorReply("ERR", "must call fetch with at least one queue"))
    assert info.value.message == "must call fetch with at least one queue"
    for reply in (SimpleReply("OK"), BulkReply(b"[]"), BulkReply(b"{"), BulkReply(b'{"jid":1}')):
        with pytest.raises(RemoteProtocolError):
            decode_fetch(reply)


def test_decode_beat() -> None:  # transcript
    assert decode_beat(SimpleReply("OK")) == "OK"
    assert decode_beat(BulkReply(b'{"state":"quiet"}')) == "quiet"
    assert decode_beat(BulkReply(b'{"state":"terminate"}')) == "terminate"
    with pytest.raises(ServerError) as info:
        decode_beat(ErrorReply("ERR", "unknown worker nobody"))
    assert info.value.message == "unknown worker nobody"


@pytest.mark.parametrize(
    "reply",
    [
        BulkReply(b'{"state":"bogus"}'),
        BulkReply(b"{}"),
        BulkReply(b'["quiet"]'),
        BulkReply(None),
        SimpleReply("quiet"),
    ],
)
def test_decode_beat_refuses_other_replies(reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_beat(reply)


def test_decode_pushb_maps_jids_to_reasons_in_send_order() -> None:  # transcript
    jobs: list[JobPayload | dict[str, Any]] = [
        {"jid": "jid-ffffffff1", "jobtype": "A", "args": []},
        {"jid": "bad", "jobtype": "A", "args": []},
        {"jid": "jid-ffffffff3", "args": []},
    ]
    # The reply lists the later job first: the result still follows the send order.
    reply = BulkReply(
        b'{"jid-ffffffff3":"jobs must have a jobtype parameter",'
        b'"bad":"jobs must have a reasonable jid parameter"}'
    )
    assert decode_pushb(reply, jobs) == [
        RejectedJob(
            jid="bad",
            reason="jobs must have a reasonable jid parameter",
            payload={"jid": "bad", "jobtype": "A", "args": []},
        ),
        RejectedJob(
            jid="jid-ffffffff3",
            reason="jobs must have a jobtype parameter",
            payload={"jid": "jid-ffffffff3", "args": []},
        ),
    ]
    assert decode_pushb(BulkReply(b"{}"), jobs) == []


def test_decode_pushb_with_payload_objects_and_unknown_jids() -> None:
    job = JobPayload.create(jid="jid-ffffffff9", jobtype="A", args=[1])
    reply = BulkReply(b'{"jid-ffffffff9":"nope","jid-never-sent":"odd"}')
    rejected = decode_pushb(reply, [job])
    assert [(r.jid, r.reason) for r in rejected] == [
        ("jid-ffffffff9", "nope"),
        ("jid-never-sent", "odd"),
    ]
    assert rejected[0].payload == job.to_wire()
    assert rejected[1].payload == {}


def test_decode_pushb_errors() -> None:  # transcript
    message = "invalid JSON: json: cannot unmarshal object into Go value of type []client.Job"
    with pytest.raises(ServerError) as info:
        decode_pushb(ErrorReply("ERR", message), [])
    assert info.value.message == message
    for reply in (BulkReply(b"[]"), BulkReply(None), SimpleReply("OK")):
        with pytest.raises(RemoteProtocolError):
            decode_pushb(reply, [])


INFO_DOC = (  # transcript, masked values filled in
    b'{"now":"2026-11-28T13:38:24.123456Z","server_utc_time":"13:38:24 UTC",'
    b'"faktory":{"queues":{"default":0,"q1":0},'
    b'"sets":{"dead":1,"retries":1,"scheduled":0,"working":0},'
    b'"tasks":{"Busy":{"reaped":0,"size":0},"Retries":{"cycles":3,"enqueued":0,"size":1,'
    b'"wall_time_sec":0.0000045},"Workers":{"reaped":0,"size":2},"Scheduled":{"cycles":3}},'
    b'"total_failures":3,"total_processed":7,"total_enqueued":9,"total_queues":2},'
    b'"server":{"description":"Faktory","faktory_version":"1.10.0","uptime":12,'
    b'"connections":3,"command_count":58,"used_memory_mb":11}}'
)


def test_decode_info() -> None:
    info = decode_info(BulkReply(INFO_DOC))
    assert isinstance(info, Info)
    assert info.faktory.queues == {"default": 0, "q1": 0}
    assert info.faktory.sets == {"dead": 1, "retries": 1, "scheduled": 0, "working": 0}
    retries = info.faktory.tasks["Retries"]
    assert (retries.cycles, retries.enqueued, retries.size) == (3, 0, 1)
    assert retries.wall_time_sec == 4.5e-06
    assert retries.reaped is None
    assert info.faktory.registered_workers == 2
    assert info.faktory.busy_jobs == 0
    # A server that leaves a size (or a whole task) out: None, not a made-up zero.
    assert info.faktory.task_size("Scheduled") is None
    assert info.faktory.task_size("Dead") is None
    assert (info.faktory.total_failures, info.faktory.total_processed) == (3, 7)
    assert (info.faktory.total_enqueued, info.faktory.total_queues) == (9, 2)
    assert info.server.faktory_version == "1.10.0"
    assert (info.server.uptime, info.server.connections, info.server.used_memory_mb) == (
        12,
        3,
        11,
    )
    assert info.now == "2026-11-28T13:38:24.123456Z"
    assert info.raw == json.loads(INFO_DOC)


@pytest.mark.parametrize(
    "reply",
    [
        BulkReply(b"[]"),
        BulkReply(None),
        BulkReply(b'{"faktory":{"queues":{"default":"many"}}}'),
        BulkReply(b'{"faktory":[]}'),
        SimpleReply("OK"),
    ],
)
def test_decode_info_refuses_bad_replies(reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_info(reply)


def test_decode_latency() -> None:
    assert decode_latency(BulkReply(b'{"default":0.000123}')) == {"default": 0.000123}
    assert decode_latency(BulkReply(b'{"a":2,"b":0}')) == {"a": 2.0, "b": 0.0}
    assert all(type(v) is float for v in decode_latency(BulkReply(b'{"a":2}')).values())
    with pytest.raises(ServerError) as info:  # transcript
        decode_latency(ErrorReply("ERR", "QUEUE LATENCY does not support wildcards"))
    assert info.value.message == "QUEUE LATENCY does not support wildcards"


@pytest.mark.parametrize(
    "reply",
    [
        BulkReply(b'{"a":"slow"}'),
        BulkReply(b'{"a":true}'),
        BulkReply(b'{"a":null}'),
        BulkReply(b"[1]"),
        BulkReply(None),
        SimpleReply("OK"),
    ],
)
def test_decode_latency_refuses_bad_replies(reply: Reply) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_latency(reply)


def test_every_decoder_raises_only_kaffi_errors_on_garbage() -> None:
    garbage: list[Reply] = [
        BulkReply(b"\x00\xff"),
        BulkReply(b"nul"),
        BulkReply(b"1e999999"),
        BulkReply(b'{"state":' * 5000),
        SimpleReply("\x00"),
        ErrorReply("X", "y"),
    ]
    decoders: list[Callable[[Reply], object]] = [
        decode_ok,
        decode_json,
        decode_fetch,
        decode_beat,
        decode_info,
        decode_latency,
        decode_hi,
        lambda r: decode_pushb(r, []),
    ]
    for decode in decoders:
        for reply in garbage:
            try:
                decode(reply)
            except KaffiError:
                pass
