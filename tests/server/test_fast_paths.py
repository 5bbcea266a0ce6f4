"""The server's shortcuts give exactly what the long way gives: the plain-ACK parse,
plain JSON strings, and memory mode answering within the read that brought a command."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from kaffi.protocol.resp import Command
from kaffi.server import jobs, session
from kaffi.server.core import ServerCore
from kaffi.server.network import DIRECT_WRITE_MAX_CONNECTIONS, Network
from kaffi.server.session import Session

ACKS = [
    '{"jid":"jid-plain-0001"}',
    '{"jid":""}',
    '{"jid":"caf\u00e9 \u2615"}',
    '{"jid":"a\\u0062c"}',
    '{"jid":"quo\\"te"}',
    '{"jid":"tab\there"}',
    '{"jid":null}',
    '{"jid":1}',
    '{"jid":"x","other":"y"}',
    '{"jid":"x","other":2}',
    '{"jid" : "x"}',
    '{"JID":"x"}',
    '{"jid":"x"',
    '{"jid":"x"} ',
    "null",
    "[]",
    "",
]


def ack_outcome(arg: str) -> tuple[bytes | None, list[str]]:
    """The reply to ``ACK arg`` and the jids the core was asked to acknowledge."""
    core = _RecordingCore()
    sess = Session(core, 1)
    assert sess.handle(Command("HELLO", '{"v":2}')).reply == b"+OK\r\n"
    return sess.handle(Command("ACK", arg)).reply, core.acked


class _RecordingCore(ServerCore):
    def __init__(self) -> None:
        super().__init__()
        self.acked: list[str] = []

    def ack(self, jid: str) -> None:
        self.acked.append(jid)


@pytest.mark.parametrize("arg", ACKS)
def test_plain_ack_is_what_the_full_parse_gives(arg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = ack_outcome(arg)
    with monkeypatch.context() as patch:
        patch.setattr(session, "_PLAIN_ACK", _NeverMatches())
        slow = ack_outcome(arg)
    assert fast == slow


class _NeverMatches:
    def fullmatch(self, text: str) -> None:
        return None


@pytest.mark.parametrize(
    "value",
    ["", "abc", "caf\u00e9", "\u2028", "\x7f", 'a"b', "a\\b", "a\x1fb", "\ud800", [], {"b": 1}],
)
def test_plain_strings_are_dumped_like_json_dumps(value: Any) -> None:
    expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    assert jobs._dump(value) == expected


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_memory_mode_answers_within_the_read(loop: asyncio.AbstractEventLoop) -> None:
    net = Network(
        ServerCore(), loop, password=None, journal=None, max_connections=10, max_line=1 << 20
    )
    conn = net._new_protocol()
    transport = _Transport()
    conn.connection_made(transport)
    net.flush()  # the greeting goes out with the loop's flush, as before
    assert transport.written == [b'+HI {"v":2}\r\n']
    # The loop never runs below: the replies are written by data_received itself, all
    # of one read's replies in one write.
    conn.data_received(b'HELLO {"v":2}\r\nPUSH {"jid":"jid-fast-0001","jobtype":"A","args":[]}\r\n')
    assert transport.written[1:] == [b"+OK\r\n+OK\r\n"]
    conn.data_received(b'ACK {"jid":"jid-fast-0001"}\r\nFLUSH\r\n')
    assert transport.written[2:] == [b"+OK\r\n+OK\r\n"]
    assert not net.dirty
    conn.data_received(b"END\r\n")
    net.flush()
    assert transport.closing


def test_with_many_connections_replies_wait_for_the_flush(
    loop: asyncio.AbstractEventLoop,
) -> None:
    net = Network(
        ServerCore(), loop, password=None, journal=None, max_connections=100, max_line=1 << 20
    )
    conns = [net._new_protocol() for _ in range(DIRECT_WRITE_MAX_CONNECTIONS + 1)]
    transports = [_Transport() for _ in conns]
    for conn, transport in zip(conns, transports, strict=True):
        conn.connection_made(transport)
    net.flush()
    conns[0].data_received(b'HELLO {"v":2}\r\nFLUSH\r\n')
    assert transports[0].written == [b'+HI {"v":2}\r\n']
    net.flush()
    assert transports[0].written[1:] == [b"+OK\r\n+OK\r\n"]


def _read(conn: Any, data: bytes) -> None:
    """What asyncio does for a buffered protocol: fill its buffer, then report how much."""
    buffer = conn.get_buffer(-1)
    buffer[: len(data)] = data
    conn.buffer_updated(len(data))


def test_connections_share_one_read_buffer_and_keep_their_own_bytes(
    loop: asyncio.AbstractEventLoop,
) -> None:
    net = Network(
        ServerCore(), loop, password=None, journal=None, max_connections=10, max_line=1 << 20
    )
    first, second = net._new_protocol(), net._new_protocol()
    assert first.get_buffer(-1) is second.get_buffer(-1)
    outs = [_Transport(), _Transport()]
    first.connection_made(outs[0])
    second.connection_made(outs[1])
    net.flush()
    # Half a command on one connection, then a whole one on the other through the same
    # buffer: the first connection's half must survive being overwritten there.
    _read(first, b'HELLO {"v":2}\r\nPUSH {"jid":"jid-buf-0001","job')
    _read(second, b'HELLO {"v":2}\r\nPUSH {"jid":"jid-buf-0002","jobtype":"B","args":[]}\r\n')
    _read(first, b'type":"A","args":[]}\r\n')
    assert outs[0].written[1:] == [b"+OK\r\n", b"+OK\r\n"]
    assert outs[1].written[1:] == [b"+OK\r\n+OK\r\n"]
    assert net.core.info()["faktory"]["queues"] == {"default": 2}


@pytest.mark.parametrize(
    "ns",
    [
        0,
        1_795_880_000_000_000_000,
        1_795_880_000_123_456_789,
        1_795_880_000_999_999_999,
        1_795_880_001_000_000_000,
        1_795_880_001_500_000_000,
        951_782_400_000_000_001,  # 2000-02-29
        -1_000_000_000,
    ],
)
def test_time_string_matches_a_fresh_format_whatever_came_before(ns: int) -> None:
    import datetime

    seconds, nanos = divmod(ns, 1_000_000_000)
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        seconds=seconds
    )
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    expected = moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"
    # Formatted cold, again from the cache, and after another second replaced the cache.
    assert jobs.time_string(ns) == expected
    assert jobs.time_string(ns) == expected
    jobs.time_string(ns + 7_000_000_000)
    assert jobs.time_string(ns) == expected
