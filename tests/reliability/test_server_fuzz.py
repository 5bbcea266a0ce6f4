"""The embedded server under hostile input: thousands of sessions, then a clean client.

Each session is one of the kinds below, chosen by a seeded random generator, so a
failure replays exactly. Where Faktory 1.10.0's answer is pinned (REFERENCE.md and the
transcript), the exact text is checked; elsewhere the answer must be an ``-ERR`` that
leaves the connection usable, or the silent close Faktory gives before HELLO.

Afterwards: the server still runs, logged no internal error, holds no leaked
connection, and a clean client pushes, fetches and acks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial

import pytest

import kaffi
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply, ReplyParser, SimpleReply
from kaffi.server import EmbeddedServer
from kaffi.server.embedded import DEFAULT_MAX_CONNECTIONS
from tests.reliability.support import RawSession, is_err, show
from tests.support import embedded_server, wait_until

pytestmark = pytest.mark.reliability

SEED = 20261128
SESSIONS = 2400
PARALLEL = 48
#: A small line cap keeps the huge-line sessions cheap; the default cap has its own test.
MAX_LINE = 64 * 1024
#: One reply (or the close) must come within this; the server answers in microseconds.
REPLY_TIMEOUT = 10.0

VERBS = [
    "HELLO", "PUSH", "PUSHB", "FETCH", "ACK", "FAIL", "BEAT", "INFO", "FLUSH", "END",
    "MUTATE", "QUEUE", "BATCH", "TRACK",
]  # fmt: skip

#: A value of every JSON type but the right one is swapped into each field.
WRONG_VALUES: dict[str, object] = {
    "number": 5,
    "float": 1.5,
    "bool": True,
    "array": [1],
    "object": {"a": 1},
    "string": "text",
}
GO_KIND = {
    "number": "number",
    "float": "number",
    "bool": "bool",
    "array": "array",
    "object": "object",
    "string": "string",
}
#: PUSH's fields, their Go types, and the JSON kind that is right for them.
JOB_FIELDS = {
    "jid": ("string", "string"),
    "jobtype": ("string", "string"),
    "args": ("[]interface {}", "array"),
    "queue": ("string", "string"),
    "retry": ("int", "number"),
    "reserve_for": ("int", "number"),
    "at": ("string", "string"),
    "backtrace": ("int", "number"),
    "custom": ("map[string]interface {}", "object"),
    "created_at": ("string", "string"),
    "enqueued_at": ("string", "string"),
    "failure": ("client.Failure", "object"),
}

UNMARSHAL = "invalid JSON: json: cannot unmarshal"

#: Expected answers: an exact ``-ERR`` text, or a predicate on the reply.
Expect = str | Callable[[Reply], bool]


def _any_err(reply: Reply) -> bool:
    return isinstance(reply, ErrorReply) and reply.code == "ERR" and bool(reply.message)


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _push_type_cases(jid: str) -> Iterator[tuple[bytes, Expect]]:
    base = {"jid": jid, "jobtype": "Fuzz", "args": [], "queue": "fuzz", "retry": 0}
    for name, (go_type, right) in JOB_FIELDS.items():
        for kind, value in WRONG_VALUES.items():
            if GO_KIND[kind] == right and not (kind == "float" and go_type == "int"):
                continue
            job = dict(base, **{name: value})
            if kind == "float" and go_type == "int":
                text = f"{UNMARSHAL} number {value} into Go struct field Job.{name} of type int"
            else:
                text = (
                    f"{UNMARSHAL} {GO_KIND[kind]} into Go struct field Job.{name} of type {go_type}"
                )
            yield b"PUSH " + _compact(job).encode() + b"\r\n", text


def _jids_error(reply: Reply) -> bool:
    return (
        isinstance(reply, ErrorReply)
        and reply.message.startswith("json: cannot unmarshal ")
        and "JobFilter.filter.jids" in reply.message
    )


def _mutate_type_cases(kind: str, value: object) -> Iterator[tuple[bytes, Expect]]:
    """MUTATE decodes into Faktory's ``client.Operation`` with Go's encoding/json and
    answers its error as is (no ``invalid JSON:`` prefix): ``Cmd string``, ``Target``
    (a string type), ``Filter *JobFilter{Jids []string, Regexp, Jobtype string}``.
    A bad element of ``jids`` is reported with the element's type, as Go does."""
    go = GO_KIND[kind]
    prefix = f"json: cannot unmarshal {go} into Go"
    arg = _compact(value)

    def op(**fields: object) -> bytes:
        return (
            b"MUTATE " + _compact({"cmd": "clear", "target": "dead", **fields}).encode() + b"\r\n"
        )

    if kind != "object":
        yield f"MUTATE {arg}\r\n".encode(), f"{prefix} value of type client.Operation"
        yield op(filter=value), f"{prefix} struct field Operation.filter of type client.JobFilter"
    if kind != "string":
        yield op(cmd=value), f"{prefix} struct field Operation.cmd of type string"
        target = f"{prefix} struct field Operation.target of type "

        def target_error(reply: Reply, start: str = target) -> bool:
            return isinstance(reply, ErrorReply) and reply.message.startswith(start)

        yield op(target=value), target_error
        for name in ("jobtype", "regexp"):
            yield (
                op(filter={name: value}),
                f"{prefix} struct field JobFilter.filter.{name} of type string",
            )
        # The exact text for a bad element is pinned in its own test below.
        yield op(filter={"jids": [value]}), _jids_error
    if kind != "array":
        yield (
            op(filter={"jids": value}),
            f"{prefix} struct field JobFilter.filter.jids of type []string",
        )


def _other_type_cases(rng: random.Random) -> Iterator[tuple[bytes, Expect]]:
    wid = f"nobody-{rng.randrange(10**9)}"
    for kind, value in WRONG_VALUES.items():
        arg = _compact(value)
        if kind != "object":
            yield f"ACK {arg}\r\n".encode(), f"invalid ACK {arg}"
            yield f"FAIL {arg}\r\n".encode(), f"invalid FAIL {arg}"
            yield f"BEAT {arg}\r\n".encode(), f"invalid BEAT {arg}"
        if kind != "string":
            for name in ("jid",):
                line = _compact({name: value})
                yield f"ACK {line}\r\n".encode(), f"invalid ACK {line}"
        if kind not in ("string",):
            for name in ("jid", "errtype", "message"):
                line = _compact({"jid": "fuzz-unknown-1", name: value})
                yield f"FAIL {line}\r\n".encode(), f"invalid FAIL {line}"
            for name in ("wid", "current_state"):
                line = _compact({"wid": wid, name: value})
                yield f"BEAT {line}\r\n".encode(), f"invalid BEAT {line}"
        if kind not in ("number", "float"):
            line = _compact({"wid": wid, "rss_kb": value})
            yield f"BEAT {line}\r\n".encode(), f"invalid BEAT {line}"
        if kind != "array":
            line = _compact({"jid": "fuzz-unknown-2", "backtrace": value})
            yield f"FAIL {line}\r\n".encode(), f"invalid FAIL {line}"
            yield (
                f"PUSHB {arg}\r\n".encode(),
                f"{UNMARSHAL} {GO_KIND[kind]} into Go value of type []client.Job",
            )
        if kind not in ("object",):
            yield (
                f"PUSHB [{arg}]\r\n".encode(),
                f"{UNMARSHAL} {GO_KIND[kind]} into Go value of type client.Job",
            )
        yield from _mutate_type_cases(kind, value)
    # Pinned by the transcript.
    yield b"PUSH\r\n", "internal error"
    yield (
        b"PUSH {not json\r\n",
        "invalid JSON: invalid character 'n' looking for beginning of object key string",
    )
    yield (
        b'PUSH {"jid":"short","jobtype":"A","args":[]}\r\n',
        "jobs must have a reasonable jid parameter",
    )
    yield (
        b'PUSH {"jid":"fuzz-args-object","jobtype":"A","args":{"a":1}}\r\n',
        (f"{UNMARSHAL} object into Go struct field Job.args of type []interface {{}}"),
    )
    yield (
        b'PUSH {"jid":"fuzz-reserve-long","jobtype":"A","args":[],"reserve_for":90000}\r\n',
        ("jobs cannot be reserved for more than one day"),
    )
    yield (
        b'PUSH {"jid":"fuzz-bad-queue","jobtype":"A","args":[],"queue":"bad queue!"}\r\n',
        ('cannot get "bad queue!" queue: queue names must match \\A[a-zA-Z0-9._-]+\\z'),
    )
    yield b"FETCH\r\n", "must call fetch with at least one queue"
    yield b'MUTATE {"cmd": "kill", "target": "retries"}\r\n', "invalid format"
    yield b'MUTATE {"cmd":"explode","target":"dead"}\r\n', "unknown mutate operation"
    yield b'MUTATE {"cmd":"discard","target":"nowhere"}\r\n', "invalid target for mutation command"
    yield b"QUEUE LATENCY *\r\n", "QUEUE LATENCY does not support wildcards"
    yield b"QUEUE EXPLODE x\r\n", "no such QUEUE subcommand: EXPLODE"
    yield (
        b'FAIL {"jid":"fuzz-unknown-xx","errtype":"E","message":"m"}\r\n',
        "Job not found fuzz-unknown-xx",
    )
    yield f'BEAT {{"wid":"{wid}"}}\r\n'.encode(), f"unknown worker {wid}"
    yield (
        b'BATCH NEW {"description":"x"}\r\n',
        "batch subsystem is only available in Faktory Enterprise",
    )
    yield (
        b"TRACK GET fuzz-aaaaaaaa\r\n",
        "tracking subsystem is only available in Faktory Enterprise",
    )
    yield b"NOSUCH cmd\r\n", "unknown command NOSUCH"
    yield b"HELLO {}\r\n", "unknown command HELLO"
    for verb in ("PUSHB", "ACK", "FAIL", "BEAT", "MUTATE", "QUEUE"):
        yield verb.encode() + b"\r\n", _any_err


PROBE = b'ACK {"jid":"fuzz-probe-0001"}\r\n'


@dataclass
class Outcome:
    kind: str
    problem: str | None = None


class Peer:
    """One asyncio connection with kaffi's reply parser."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = ReplyParser(max_line=1 << 20)

    @classmethod
    async def open(cls, port: int) -> Peer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def reply(self) -> Reply | None:
        """The next reply, or None when the server closed the connection first."""
        while True:
            reply = self.parser.next_reply()
            if reply is not None:
                return reply
            try:
                data = await asyncio.wait_for(self.reader.read(65536), REPLY_TIMEOUT)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.parser.feed(data)

    async def closed_silently(self) -> bool:
        """True when the server closes without sending anything more."""
        try:
            data = await asyncio.wait_for(self.reader.read(65536), REPLY_TIMEOUT)
        except ConnectionResetError:
            return True
        return data == b"" and self.parser.buffered == 0

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            await self.writer.drain()
        except ConnectionError:
            return

    async def hello(self) -> None:
        hi = await self.reply()
        assert isinstance(hi, SimpleReply), hi
        assert hi.text == 'HI {"v":2}', hi
        await self.send(b'HELLO {"v":2,"hostname":"fuzz","pid":1}\r\n')
        ok = await self.reply()
        assert ok == SimpleReply("OK"), ok

    def close(self) -> None:
        self.writer.transport.abort()


async def _before_hello(port: int, payload: bytes, kind: str) -> Outcome:
    peer = await Peer.open(port)
    try:
        hi = await peer.reply()
        if not isinstance(hi, SimpleReply) or not hi.text.startswith("HI "):
            return Outcome(kind, f"no HI greeting: {hi!r}")
        await peer.send(payload)
        if not await peer.closed_silently():
            return Outcome(kind, f"{payload[:60]!r} before HELLO was not closed silently")
        return Outcome(kind)
    finally:
        peer.close()


async def _typed(port: int, cases: list[tuple[bytes, Expect]], kind: str) -> Outcome:
    peer = await Peer.open(port)
    try:
        await peer.hello()
        for line, expect in cases:
            await peer.send(line)
            reply = await peer.reply()
            if reply is None:
                return Outcome(kind, f"{line[:80]!r} closed the connection")
            if isinstance(expect, str):
                if not (
                    isinstance(reply, ErrorReply)
                    and reply.code == "ERR"
                    and reply.message == expect
                ):
                    return Outcome(
                        kind, f"{line[:120]!r} got {show(reply)!r}, Faktory says -ERR {expect}"
                    )
            elif not expect(reply):
                return Outcome(kind, f"{line[:120]!r} got {show(reply)!r}")
        await peer.send(PROBE)
        probe = await peer.reply()
        if probe != SimpleReply("OK"):
            return Outcome(kind, f"connection unusable after bad input: probe got {probe!r}")
        return Outcome(kind)
    finally:
        peer.close()


async def _garbage_after_hello(port: int, payload: bytes, kind: str) -> Outcome:
    peer = await Peer.open(port)
    try:
        await peer.hello()
        await peer.send(payload)
        replies: list[Reply] = []
        while True:
            reply = await peer.reply()
            if reply is None:
                break
            replies.append(reply)
        if not replies or not all(_any_err(r) for r in replies):
            return Outcome(kind, f"garbage got {[show(r) for r in replies][:5]}")
        if "UTF-8" not in show(replies[-1]):
            return Outcome(kind, f"invalid UTF-8 ended with {show(replies[-1])!r}")
        return Outcome(kind)
    finally:
        peer.close()


async def _huge_line(port: int, kind: str) -> Outcome:
    peer = await Peer.open(port)
    try:
        await peer.hello()
        await peer.send(b"PUSH " + b"{" * (MAX_LINE - 4))
        reply = await peer.reply()
        if not (isinstance(reply, ErrorReply) and "longer than" in reply.message):
            return Outcome(kind, f"a line over the cap got {reply!r}")
        if not await peer.closed_silently():
            return Outcome(kind, "the connection stayed open after a line over the cap")
        return Outcome(kind)
    finally:
        peer.close()


async def _abrupt(port: int, payload: bytes, kind: str) -> Outcome:
    peer = await Peer.open(port)
    if payload:
        await peer.reply()
        await peer.send(payload)
    peer.close()
    return Outcome(kind)


async def _silent(port: int, kind: str) -> Outcome:
    """Connect and say nothing: Faktory closes after its 2 s HELLO deadline."""
    peer = await Peer.open(port)
    try:
        started = time.monotonic()
        hi = await peer.reply()
        if not isinstance(hi, SimpleReply):
            return Outcome(kind, f"no HI: {hi!r}")
        if not await peer.closed_silently():
            return Outcome(kind, "a client that never said HELLO was not closed")
        if time.monotonic() - started > 2.0 + REPLY_TIMEOUT:
            return Outcome(kind, "the HELLO deadline was not enforced")
        return Outcome(kind)
    finally:
        peer.close()


def _random_bytes(rng: random.Random, low: int, high: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(low, high)))


def _bad_hellos() -> list[bytes]:
    lines = [b"HELLO\r\n", b"HELLO not-json\r\n", b"HELLO []\r\n", b"HELLO 5\r\n", b"HELLO {\r\n"]
    for name, value in (
        ("wid", 5),
        ("hostname", ["h"]),
        ("pid", "1"),
        ("labels", "x"),
        ("labels", [1]),
        ("v", "2"),
        ("pwdhash", 7),
    ):
        lines.append(b"HELLO " + _compact({"hostname": "h", name: value}).encode() + b"\r\n")
    return lines


def _plan(rng: random.Random, port: int) -> list[Callable[[], Awaitable[Outcome]]]:
    typed = list(_other_type_cases(rng))
    bad_hellos = _bad_hellos()
    sessions: list[Callable[[], Awaitable[Outcome]]] = []
    for n in range(SESSIONS):
        roll = rng.random()
        if roll < 0.15:
            payload = _random_bytes(rng, 1, 300) + b"\n"
            sessions.append(partial(_before_hello, port, payload, "random bytes before HELLO"))
        elif roll < 0.22:
            payload = b'HELLO {"hostname":"\xff\xfe"}\r\n'
            sessions.append(partial(_before_hello, port, payload, "invalid UTF-8 before HELLO"))
        elif roll < 0.35:
            verb = rng.choice([v for v in VERBS if v != "HELLO"])
            payload = f"{verb} {{}}\r\n".encode()
            sessions.append(partial(_before_hello, port, payload, "command before HELLO"))
        elif roll < 0.43:
            payload = rng.choice(bad_hellos)
            sessions.append(partial(_before_hello, port, payload, "malformed HELLO"))
        elif roll < 0.63:
            cases = list(_push_type_cases(f"fuzz-{n:08d}"))
            chosen = rng.sample(cases, k=min(6, len(cases)))
            sessions.append(partial(_typed, port, chosen, "wrong JSON types in PUSH"))
        elif roll < 0.83:
            chosen = rng.sample(typed, k=min(6, len(typed)))
            sessions.append(partial(_typed, port, chosen, "wrong JSON types, other commands"))
        elif roll < 0.92:
            payload = _random_bytes(rng, 0, 200).replace(b"\xff", b"") + b"\xff\xfe\r\n"
            sessions.append(
                partial(_garbage_after_hello, port, payload, "invalid UTF-8 after HELLO")
            )
        elif roll < 0.95:
            sessions.append(partial(_huge_line, port, "line over the cap"))
        elif roll < 0.995:
            payload = rng.choice([b"", b"PU", b'PUSH {"jid":"half', _random_bytes(rng, 1, 50)])
            sessions.append(partial(_abrupt, port, payload, "abrupt close"))
        else:
            sessions.append(partial(_silent, port, "silent client"))
    return sessions


async def _run_all(port: int) -> list[Outcome]:
    rng = random.Random(SEED)
    plan = _plan(rng, port)
    gate = asyncio.Semaphore(PARALLEL)

    async def one(make: Callable[[], Awaitable[Outcome]]) -> Outcome:
        async with gate:
            try:
                return await asyncio.wait_for(make(), 3 * REPLY_TIMEOUT)
            except (OSError, asyncio.TimeoutError, AssertionError) as exc:
                return Outcome("session", f"{type(exc).__name__}: {exc}")

    return list(await asyncio.gather(*(one(make) for make in plan)))


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def _clean_round_trip(server: EmbeddedServer) -> None:
    with kaffi.Client(server.url, timeout=10) as client:
        jid = client.push({"jobtype": "clean", "args": [1, "two"], "queue": "clean"})
        job = client.fetch("clean")
        assert job is not None, job
        assert job.jid == jid, job
        assert job.args == [1, "two"], job
        client.ack(jid)
        assert client.info().faktory.sets["working"] == 0


def test_thousands_of_hostile_sessions_then_a_clean_client_works() -> None:
    errors = _Errors()
    server_log = logging.getLogger("kaffi.server")
    server_log.addHandler(errors)
    try:
        with embedded_server(max_line=MAX_LINE) as server:
            started = time.monotonic()
            outcomes = asyncio.run(_run_all(server.port))
            elapsed = time.monotonic() - started
            kinds = Counter(o.kind for o in outcomes)
            problems = [f"{o.kind}: {o.problem}" for o in outcomes if o.problem]
            summary = f"{len(outcomes)} sessions in {elapsed:.1f}s: {dict(kinds)}"
            assert not problems, f"{len(problems)} bad answers ({summary}):\n" + "\n".join(
                problems[:15]
            )
            assert server.running, f"the server stopped ({summary})"
            # Every hostile connection is gone again.
            wait_until(
                lambda: server.info()["server"]["connections"] == 0,
                lambda: f"connections to drain, still {server.info()['server']['connections']}",
            )
            _clean_round_trip(server)
    finally:
        server_log.removeHandler(errors)
    assert not errors.records, f"the server logged errors: {errors.records[:5]}"


def test_a_connection_flood_up_to_the_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Both ends of every connection live in this process: two descriptors each, plus slack.
    wanted = 2 * DEFAULT_MAX_CONNECTIONS + 300
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        usable = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = DEFAULT_MAX_CONNECTIONS if usable >= wanted else max(10, (usable - 300) // 2)
        kwargs = {} if limit == DEFAULT_MAX_CONNECTIONS else {"max_connections": limit}
        with embedded_server(**kwargs) as server:  # type: ignore[arg-type]
            assert server.max_connections == limit
            result = asyncio.run(_flood(server.port, limit))
            assert result is None, result
            wait_until(
                lambda: server.info()["server"]["connections"] == 0,
                "the flood's connections to close",
            )
            _clean_round_trip(server)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _flood(port: int, limit: int) -> str | None:
    peers: list[Peer] = []
    try:
        gate = asyncio.Semaphore(200)

        async def connect() -> Peer:
            async with gate:
                peer = await Peer.open(port)
                hi = await peer.reply()
                assert isinstance(hi, SimpleReply), hi
                assert hi.text.startswith("HI "), hi
                # Greeted, the connection stays: an ungreeted one is closed after the
                # server's 2 s handshake timeout, which opening thousands can outlast.
                await peer.send(b'HELLO {"v":2,"hostname":"flood"}\r\n')
                ok = await peer.reply()
                assert ok == SimpleReply("OK"), ok
                return peer

        peers = list(await asyncio.gather(*(connect() for _ in range(limit))))
        over = await Peer.open(port)
        peers.append(over)
        reply = await over.reply()
        expected = f"too many connections: {limit}"
        if not (isinstance(reply, ErrorReply) and reply.message == expected):
            return f"connection {limit + 1} got {reply!r}, Faktory says -ERR {expected}"
        if not await over.closed_silently():
            return "the connection over the limit was left open"
        # The ones inside the limit still work.
        await peers[0].send(b"INFO\r\n")
        info = await peers[0].reply()
        if not isinstance(info, BulkReply):
            return f"a connection inside the limit got {info!r} for INFO"
        return None
    finally:
        for peer in peers:
            peer.close()
        await asyncio.sleep(0)


def test_a_bad_jid_in_a_mutate_filter_is_reported_like_go() -> None:
    """Go's encoding/json names the element's type when one element of a ``[]string``
    does not fit: ``... JobFilter.filter.jids of type string``, not ``[]string``."""
    wrong: list[str] = []
    with embedded_server() as server, RawSession("127.0.0.1", server.port) as raw:
        raw.hello()
        for element, kind in (
            ("5", "number"),
            ("true", "bool"),
            ("[1]", "array"),
            ("{}", "object"),
        ):
            line = b'MUTATE {"cmd":"kill","target":"dead","filter":{"jids":[%s]}}\r\n' % (
                element.encode()
            )
            reply = raw.request(line)
            expected = f"{kind} into Go struct field JobFilter.filter.jids of type string"
            if not is_err(reply, f"json: cannot unmarshal {expected}"):
                wrong.append(
                    f"{line!r} got {show(reply)!r}; Go: -ERR json: cannot unmarshal {expected}"
                )
    assert not wrong, "\n".join(wrong)
