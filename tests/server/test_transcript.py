"""Faktory 1.10.0 fidelity: replies byte for byte as the real server gives them.

``test_recorded_script_matches_faktory`` replays ``../shared/faktory/record.py`` (beside
the clone) and diffs it with the recording of a real Faktory 1.10.0. The other tests keep
the essential expectations of that recording inside this repository, so they always run.

They assert only what a real Faktory 1.10.0 does, so with ``KAFFI_TEST_URL=tcp://...``
they run against that server instead of the embedded one (the ``faktory_server`` fixture
FLUSHes it first; queue names are never forgotten by FLUSH, so the tests look only at the
queues they use).
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaffi.server import EmbeddedServer
from tests.server.wire import Wire, push_line
from tests.support import embedded_server

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "faktory"
RECORD = SHARED / "record.py"
TRANSCRIPT = SHARED / "transcript-faktory-1.10.0.txt"
TIME = re.compile(r'"(created_at|enqueued_at|failed_at|next_at|at)":"[^"]*"')


def masked(text: str) -> str:
    return TIME.sub(r'"\1":"<time>"', text)


@pytest.fixture
def srv(faktory_server: Any) -> Any:
    """The server under test: the embedded one, or the real Faktory of KAFFI_TEST_URL."""
    if getattr(faktory_server, "tls", False):
        pytest.skip("these tests speak plain TCP; KAFFI_TEST_URL names a TLS server")
    return faktory_server


def password_set(server: Any) -> bool:
    return bool(getattr(server, "password", None))


@pytest.mark.skipif(
    not (RECORD.exists() and TRANSCRIPT.exists()),
    reason=(
        "the recording of a real Faktory 1.10.0 that this test replays is not beside this "
        "checkout (the project's CI has it); the other transcript tests still run"
    ),
)
def test_recorded_script_matches_faktory() -> None:
    # The script runs one command at a time, so no FETCH in it can be woken by a PUSH: a
    # short hold changes only how long its empty FETCHes take, never a reply.
    with embedded_server() as srv:
        result = subprocess.run(
            [sys.executable, str(RECORD), f"{srv.host}:{srv.port}"],
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    expected = TRANSCRIPT.read_text()
    diff = "\n".join(
        difflib.unified_diff(expected.splitlines(), result.stdout.splitlines(), "faktory", "kaffi")
    )
    assert result.stdout == expected, diff


def test_push_fetch_field_order(wire: Callable[..., Wire]) -> None:
    w = wire("w1")
    line = push_line(
        jid="jid-aaaaaaaa1",
        jobtype="A",
        args=[1, "two", {"three": 3}],
        custom={"k": "v"},
        reserve_for=600,
    )
    assert w.send(line) == ["+OK"]
    reply = w.send("FETCH default")
    assert masked(reply[1]) == (
        '{"retry":25,"custom":{"k":"v"},"jid":"jid-aaaaaaaa1","queue":"default","jobtype":"A",'
        '"created_at":"<time>","enqueued_at":"<time>","args":[1,"two",{"three":3}],'
        '"reserve_for":600}'
    )
    assert reply[0] == f"${len(reply[1].encode())}"
    assert w.send('ACK {"jid":"jid-aaaaaaaa1"}') == ["+OK"]
    assert w.send("FETCH") == ["-ERR must call fetch with at least one queue"]


def test_unknown_fields_dropped_and_backtrace_kept(wire: Callable[..., Wire]) -> None:
    w = wire()
    assert w.send(push_line(jid="jid-cccccccc1", priority=9, extra="x", queue="q1")) == ["+OK"]
    assert masked(w.send("FETCH q1")[1]) == (
        '{"retry":25,"jid":"jid-cccccccc1","queue":"q1","jobtype":"A","created_at":"<time>",'
        '"enqueued_at":"<time>","args":[]}'
    )
    assert w.send(push_line(jid="jid-hhhhhhhh3", reserve_for=10, backtrace=5, retry=1)) == ["+OK"]
    assert masked(w.send("FETCH default")[1]) == (
        '{"retry":1,"jid":"jid-hhhhhhhh3","queue":"default","jobtype":"A","created_at":"<time>",'
        '"enqueued_at":"<time>","args":[],"reserve_for":10,"backtrace":5}'
    )


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (push_line(jid="short"), "jobs must have a reasonable jid parameter"),
        ('PUSH {"jid":"jid-bbbbbbbb1","args":[]}', "jobs must have a jobtype parameter"),
        ('PUSH {"jid":"jid-bbbbbbbb2","jobtype":"A"}', "jobs must have an args parameter"),
        (
            push_line(jid="jid-bbbbbbbb3", args={"a": 1}),
            "invalid JSON: json: cannot unmarshal object into Go struct field Job.args of type "
            "[]interface {}",
        ),
        (
            push_line(jid="jid-bbbbbbbb4", reserve_for=90000),
            "jobs cannot be reserved for more than one day",
        ),
        (
            push_line(jid="jid-bbbbbbbb5", at="tomorrow"),
            'invalid timestamp for \'at\': "tomorrow": parsing time "tomorrow" as '
            '"2006-01-02T15:04:05.999999999Z07:00": cannot parse "tomorrow" as "2006"',
        ),
        (
            push_line(jid="jid-bbbbbbbb6", queue="bad queue!"),
            'cannot get "bad queue!" queue: queue names must match \\A[a-zA-Z0-9._-]+\\z',
        ),
        (
            "PUSH {not json",
            "invalid JSON: invalid character 'n' looking for beginning of object key string",
        ),
        ("PUSH", "internal error"),
        ("NOSUCH cmd", "unknown command NOSUCH"),
        (
            'BATCH NEW {"description":"x"}',
            "batch subsystem is only available in Faktory Enterprise",
        ),
        ("TRACK GET jid-aaaaaaaa1", "tracking subsystem is only available in Faktory Enterprise"),
        ('MUTATE {"cmd": "kill", "target": "retries"}', "invalid format"),
        ('MUTATE {"cmd":"explode","target":"dead"}', "unknown mutate operation"),
        ('MUTATE {"cmd":"discard","target":"nowhere"}', "invalid target for mutation command"),
        (
            "PUSHB {}",
            "invalid JSON: json: cannot unmarshal object into Go value of type []client.Job",
        ),
        ("QUEUE LATENCY *", "QUEUE LATENCY does not support wildcards"),
        ("QUEUE EXPLODE x", "no such QUEUE subcommand: EXPLODE"),
        ('BEAT {"wid":"nobody"}', "unknown worker nobody"),
        (
            'FAIL {"jid":"jid-unknown-xx","errtype":"E","message":"m"}',
            "Job not found jid-unknown-xx",
        ),
    ],
)
def test_error_texts(wire: Callable[..., Wire], line: str, error: str) -> None:
    w = wire()
    assert w.send(line) == ["-ERR " + error]
    # A -ERR leaves the connection usable.
    assert w.send('ACK {"jid":"never-existed-1"}') == ["+OK"]


def test_handshake_rules(srv: Any, wire: Callable[..., Wire]) -> None:
    if password_set(srv):
        pytest.skip("a HELLO without pwdhash needs a server without a password")
    legacy = wire(greet=False)
    assert legacy.line() == '+HI {"v":2}'
    assert legacy.send('HELLO {"hostname":"x"}') == ["+OK"]
    early = wire(greet=False)
    assert early.line() == '+HI {"v":2}'
    early.write(b"INFO\r\n")
    assert early.closed_by_server()
    ended = wire()
    ended.write(b"END\r\n")
    assert ended.closed_by_server()


def test_fail_retry_dead_and_failure_record(wire: Callable[..., Wire]) -> None:
    w = wire("w1")
    w.send(push_line(jid="jid-iiiiiiii1", args=["x"], retry=5))
    w.send("FETCH default")
    fail = {
        "jid": "jid-iiiiiiii1",
        "errtype": "KeyError",
        "message": "no such key",
        "backtrace": ["f.py:1 in g", "h.py:2 in k"],
    }
    assert w.send("FAIL " + json.dumps(fail, separators=(",", ":"))) == ["+OK"]
    requeue = 'MUTATE {"cmd":"requeue","target":"retries","filter":{"jids":["jid-iiiiiiii1"]}}'
    assert w.send(requeue) == ["+OK"]
    assert masked(w.send("FETCH default")[1]) == (
        '{"retry":5,"failure":{"failed_at":"<time>","next_at":"<time>","message":"no such key",'
        '"errtype":"KeyError","backtrace":["f.py:1 in g","h.py:2 in k"],"retry_count":0,'
        '"remaining":5},"jid":"jid-iiiiiiii1","queue":"default","jobtype":"A",'
        '"created_at":"<time>","enqueued_at":"<time>","args":["x"]}'
    )
    w.send('FAIL {"jid":"jid-iiiiiiii1","errtype":"KeyError","message":"again"}')
    w.send('MUTATE {"cmd":"requeue","target":"retries","filter":{"jobtype":"A"}}')
    assert (
        '"message":"again","errtype":"KeyError","retry_count":1,"remaining":4}'
        in (w.send("FETCH default")[1])
    )
    # retry -1: straight to dead; retry 0: dropped.
    w.send(push_line(jid="jid-dddddddd2", retry=-1))
    w.send("FETCH default")
    w.send('FAIL {"jid":"jid-dddddddd2","errtype":"E","message":"to dead"}')
    w.send(push_line(jid="jid-dddddddd3", retry=0))
    w.send("FETCH default")
    w.send('FAIL {"jid":"jid-dddddddd3","errtype":"E","message":"dropped"}')
    sets = w.value("INFO")["faktory"]["sets"]
    assert sets == {"dead": 1, "retries": 0, "scheduled": 0, "working": 1}


def test_info_shape_and_queue_registry(wire: Callable[..., Wire]) -> None:
    w = wire()
    w.send(push_line(jid="jid-cccccccc1", queue="q1"))
    w.send("FETCH nonexistent q1")
    info = w.value("INFO")
    assert list(info) == ["now", "server_utc_time", "faktory", "server"]
    assert list(info["faktory"]) == [
        "queues",
        "sets",
        "tasks",
        "total_failures",
        "total_processed",
        "total_enqueued",
        "total_queues",
    ]
    assert list(info["server"]) == [
        "description",
        "faktory_version",
        "uptime",
        "connections",
        "command_count",
        "used_memory_mb",
    ]
    # Only the queues this test touched: a shared real server knows others too.
    mine = ("q1", "nonexistent")

    def queues() -> dict[str, int]:
        known = w.value("INFO")["faktory"]["queues"]
        return {name: size for name, size in known.items() if name in mine}

    assert {k: v for k, v in info["faktory"]["queues"].items() if k in mine} == {"q1": 0}
    assert w.send("FLUSH") == ["+OK"]
    assert queues() == {"q1": 0}
    assert w.send("QUEUE REMOVE q1") == ["+OK"]
    assert queues() == {}


def test_pushb_and_scheduled(wire: Callable[..., Wire]) -> None:
    w = wire()
    batch = [
        {"jid": "jid-ffffffff1", "jobtype": "A", "args": []},
        {"jid": "bad", "jobtype": "A", "args": []},
        {"jid": "jid-ffffffff3", "args": []},
    ]
    assert w.send("PUSHB " + json.dumps(batch, separators=(",", ":")))[1] == (
        '{"bad":"jobs must have a reasonable jid parameter",'
        '"jid-ffffffff3":"jobs must have a jobtype parameter"}'
    )
    assert w.send("PUSHB []") == ["$2", "{}"]
    assert w.send(push_line(jid="jid-eeeeeeee1", at="2099-01-01T00:00:00Z")) == ["+OK"]
    assert w.send(push_line(jid="jid-eeeeeeee2", at="2000-01-01T00:00:00+02:00")) == ["+OK"]
    assert w.value("INFO")["faktory"]["sets"]["scheduled"] == 1
    fetched = json.loads(w.send("FETCH default")[1])
    assert fetched["jid"] == "jid-ffffffff1"
    assert json.loads(w.send("FETCH default")[1])["at"] == "2000-01-01T00:00:00+02:00"
    assert w.send(
        'MUTATE {"cmd":"discard","target":"scheduled","filter":{"regexp":"*eeeeeeee1*"}}'
    ) == ["+OK"]
    assert w.value("INFO")["faktory"]["sets"]["scheduled"] == 0


def test_queue_pause_latency_and_beat(wire: Callable[..., Wire]) -> None:
    w = wire("w-1")
    # A queue name no server has seen (a shared real server knows "default" already).
    q = "pq-" + secrets.token_hex(4)
    assert w.send(f"QUEUE PAUSE {q}") == ["+OK"]  # unknown queues are ignored
    w.send(push_line(jid="jid-gggggggg0", queue=q))
    assert w.send(f"FETCH {q}")[0] != "$-1"
    assert w.send(f"QUEUE PAUSE {q}") == ["+OK"]
    w.send(push_line(jid="jid-gggggggg1", queue=q))
    assert w.send(f"FETCH {q}") == ["$-1"]
    assert w.send(f"QUEUE RESUME {q}") == ["+OK"]
    latency = w.send(f"QUEUE LATENCY {q}")[1]
    assert re.fullmatch(r'\{"' + q + r'":\d+\.\d+\}', latency), latency
    assert w.send('BEAT {"wid":"w-1"}') == ["+OK"]
    assert w.send('BEAT {"wid":"w-1","current_state":"quiet","rss_kb":1000}') == [
        "$17",
        '{"state":"quiet"}',
    ]


def test_empty_fetch_blocks_about_two_seconds(srv: Any, wire: Callable[..., Wire]) -> None:
    with contextlib.ExitStack() as stack:
        if isinstance(srv, EmbeddedServer):
            # The test fixture shortens the hold; the server's default is Faktory's.
            srv = stack.enter_context(EmbeddedServer())
        w = wire("w-empty", server=srv)
        started = time.monotonic()
        assert w.send("FETCH nothing-here-" + secrets.token_hex(4)) == ["$-1"]
        # Faktory holds an empty FETCH for about 2 s (a lower bound: never an early $-1).
        assert time.monotonic() - started >= 1.8


def test_queue_wildcards(wire: Callable[..., Wire]) -> None:
    w = wire("w-star")
    a, b = ("star-a-" + secrets.token_hex(4), "star-b-" + secrets.token_hex(4))
    assert w.send(push_line(jid="jid-star-00001", queue=a)) == ["+OK"]
    assert w.send(push_line(jid="jid-star-00002", queue=b)) == ["+OK"]
    assert w.send("QUEUE PAUSE *") == ["+OK"]
    try:
        assert w.send(f"FETCH {a} {b}") == ["$-1"]  # every queue is paused
    finally:
        assert w.send("QUEUE RESUME *") == ["+OK"]
    assert json.loads(w.send(f"FETCH {a} {b}")[1])["jid"] == "jid-star-00001"
    known = w.value("INFO")["faktory"]["queues"]
    assert known[a] == 0
    assert known[b] == 1
    assert w.send("QUEUE REMOVE *") == ["+OK"]
    known = w.value("INFO")["faktory"]["queues"]
    assert a not in known
    assert b not in known
