"""Hostile input: the server never crashes and keeps serving whatever clients send."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaffi.protocol.resp import Command
from kaffi.server.core import ServerCore
from kaffi.server.session import Session
from tests.server.wire import Wire, push_line
from tests.support import embedded_server

VERBS = [
    "PUSH",
    "PUSHB",
    "FETCH",
    "ACK",
    "FAIL",
    "BEAT",
    "INFO",
    "FLUSH",
    "MUTATE",
    "QUEUE",
    "BATCH",
    "TRACK",
    "KAFFI",
    "HELLO",
    "END",
    "NOSUCH",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "jid",
    "jobtype",
    "args",
    "queue",
    "retry",
    "at",
    "reserve_for",
    "backtrace",
    "custom",
    "failure",
    "created_at",
    "wid",
    "current_state",
    "rss_kb",
    "errtype",
    "message",
    "cmd",
    "target",
    "filter",
    "jids",
    "regexp",
]


def hostile_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    commands=st.lists(
        st.tuples(
            st.sampled_from(VERBS),
            st.one_of(
                st.none(),
                st.text(max_size=40),
                hostile_objects().map(lambda d: json.dumps(d, separators=(",", ":"))),
                st.lists(hostile_objects(), max_size=3).map(json.dumps),
            ),
        ),
        max_size=25,
    )
)
def test_session_survives_any_command(commands: list[tuple[str, str | None]]) -> None:
    core = ServerCore()
    session = Session(core, 1)
    session.handle(Command("HELLO", '{"v":2,"wid":"w-fuzz"}'))
    for verb, arg in commands:
        outcome = session.handle(Command(verb, arg))
        assert outcome.reply is None or outcome.reply.endswith(b"\r\n")
        core.tick()
    core.clock.advance(3600)
    core.tick()
    core.info()


def _garbage(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 400))
    if kind == 1:
        return b"HELLO {\xff\xfe}\r\n"
    if kind == 2:
        return b"INFO\r\n"  # before HELLO
    if kind == 3:
        return b'HELLO {"v":2}\r\n' + b"PUSH " + b"x" * 70_000 + b"\r\n"  # over the cap
    if kind == 4:
        verb = rng.choice(VERBS).encode()
        value = rng.choice(
            [
                '{"jid":5}',
                "[1,2",
                '{"wid":[]}',
                "null",
                '"x"',
                "{}",
                "[]",
                "",
                '{"cmd":"kill","target":"dead","filter":{"jids":"x"}}',
            ]
        )
        return b'HELLO {"v":2,"wid":"w"}\r\n' + verb + b" " + value.encode() + b"\r\n"
    if kind == 5:
        return b'HELLO {"v":2}\r\n' + b"\xc3\x28 invalid utf-8\r\n"
    if kind == 6:
        return b'HELLO {"v":2,"wid":"w-' + str(rng.randrange(5)).encode() + b'"}\r\nFETCH q\r\n'
    if kind == 7:
        return (
            b'HELLO {"v":2}\r\nPUSH '
            + json.dumps(
                {
                    "jid": "j" * rng.randrange(12),
                    "jobtype": rng.choice(["", "A", None]),
                    "args": rng.choice([[], None, {}, "s"]),
                    "at": rng.choice(["", "nope", None]),
                }
            ).encode()
            + b"\r\n"
        )
    return b""  # connect and vanish


async def _hostile_session(host: str, port: int, rng: random.Random) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError):
        return
    try:
        writer.write(_garbage(rng))
        await asyncio.wait_for(writer.drain(), 5)
        if rng.random() < 0.5:
            await asyncio.wait_for(reader.read(256), 0.05)
    except (OSError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


@pytest.mark.reliability
def test_thousands_of_hostile_sessions_then_a_clean_client(
    wire: Callable[..., Wire], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="kaffi.server")
    rng = random.Random(1234)
    with embedded_server(max_line=64 * 1024, max_connections=500) as srv:

        async def storm() -> None:
            limit = asyncio.Semaphore(100)

            async def one() -> None:
                async with limit:
                    await _hostile_session(srv.host, srv.port, random.Random(rng.random()))

            await asyncio.gather(*(one() for _ in range(3000)))

        asyncio.run(storm())
        clean = wire("w-clean", server=srv)
        assert clean.send(push_line(jid="jid-clean-0001", queue="clean")) == ["+OK"]
        assert json.loads(clean.send("FETCH clean")[1])["jid"] == "jid-clean-0001"
        assert clean.send('ACK {"jid":"jid-clean-0001"}') == ["+OK"]
    assert not caplog.records, [r.getMessage() for r in caplog.records]
