"""The client side of a connection as a state machine, fed bytes without a socket.

Every exchange is fed whole, byte by byte, and with trailing data, as h11's tests do; each
rule of kaffi/protocol/connection.py's docstring has a test here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from kaffi.errors import (
    AuthenticationError,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
)
from kaffi.protocol.commands import encode_ack, encode_end, encode_fetch, encode_info, password_hash
from kaffi.protocol.connection import OK_REPLY, ClientConnection, ConnectionState
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply, SimpleReply

HI = b'+HI {"v":2}\r\n'
HI_WITH_PASSWORD = b'+HI {"v":2,"s":"123456789abc","i":1735}\r\n'
OK = b"+OK\r\n"
LINE = encode_ack("jid-00000001")


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


CHUNKINGS = [whole, byte_by_byte]


def feed(
    proto: ClientConnection, data: bytes, chunks: Callable[[bytes], Iterator[bytes]]
) -> list[Reply]:
    """Feed ``data`` in ``chunks`` through receive_reply; every reply that came out."""
    replies = []
    for chunk in chunks(data):
        reply = proto.receive_reply(chunk)
        while reply is not None:
            replies.append(reply)
            reply = proto.next_reply() if proto.owed else None
    return replies


def greeted(**hello: object) -> ClientConnection:
    proto = ClientConnection("tcp://test:7419")
    assert proto.receive_reply(HI) is not None
    proto.send_hello(hostname="box", pid=42, **hello)  # type: ignore[arg-type]
    assert proto.receive_reply(OK) == OK_REPLY
    assert state(proto) is ConnectionState.READY
    return proto


def started(proto: ClientConnection) -> bool:
    # A call, so that the type checker does not narrow the attribute between feeds.
    return proto.reply_started


def state(proto: ClientConnection) -> ConnectionState:
    return proto.state


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_handshake_hi_hello_ok(chunks: Callable[[bytes], Iterator[bytes]]) -> None:
    proto = ClientConnection()
    assert state(proto) is ConnectionState.AWAITING_HI
    assert feed(proto, HI, chunks) == [SimpleReply('HI {"v":2}')]
    assert state(proto) is ConnectionState.SENDING_HELLO
    assert proto.hi.v == 2
    hello = proto.send_hello(hostname="box", pid=42, wid="w1", labels=["a"])
    assert hello.startswith(b"HELLO {")
    assert hello.endswith(b"}\r\n")
    assert json.loads(hello[6:]) == {
        "hostname": "box",
        "wid": "w1",
        "pid": 42,
        "labels": ["a"],
        "v": 2,
    }
    assert state(proto) is ConnectionState.AWAITING_OK
    assert feed(proto, OK, chunks) == [OK_REPLY]
    assert proto.ready
    assert not proto.broken
    assert proto.owed == 0


def test_hello_carries_the_password_hash_the_greeting_asks_for() -> None:
    proto = ClientConnection()
    proto.receive_reply(HI_WITH_PASSWORD)
    hello = json.loads(proto.send_hello(hostname="box", pid=1, password="secret")[6:])
    assert hello["pwdhash"] == password_hash("secret", "123456789abc", 1735)
    assert "wid" not in hello  # a producer's connection


def test_no_password_for_a_server_that_wants_one_breaks_the_connection() -> None:
    proto = ClientConnection()
    proto.receive_reply(HI_WITH_PASSWORD)
    with pytest.raises(AuthenticationError):
        proto.send_hello(hostname="box", pid=1)
    assert state(proto) is ConnectionState.BROKEN


def test_refused_hello_raises_the_server_error_and_breaks() -> None:
    proto = ClientConnection()
    proto.receive_reply(HI)
    proto.send_hello(hostname="box", pid=1, password="wrong")
    with pytest.raises(AuthenticationError, match="Invalid password"):
        proto.receive_reply(b"-ERR Invalid password\r\n")
    assert proto.broken
    with pytest.raises(ReadError, match="broken"):
        proto.send(LINE)


def test_a_greeting_that_is_not_hi_is_a_remote_protocol_error() -> None:
    proto = ClientConnection()
    with pytest.raises(RemoteProtocolError, match="HI"):
        proto.receive_reply(OK)
    assert proto.broken


def test_bytes_before_hello_is_sent_are_out_of_step() -> None:
    proto = ClientConnection()
    proto.receive_reply(HI + OK)  # +OK nobody asked for yet
    assert state(proto) is ConnectionState.BROKEN


def test_trailing_bytes_after_hellos_ok_are_out_of_step() -> None:
    proto = ClientConnection()
    proto.receive_reply(HI)
    proto.send_hello(hostname="box", pid=1)
    assert proto.receive_reply(OK + OK) == OK_REPLY
    assert state(proto) is ConnectionState.BROKEN


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (lambda p: p.send(LINE), LocalProtocolError),
        (lambda p: p.expect_reply(), LocalProtocolError),
    ],
)
def test_commands_before_the_handshake_are_illegal(
    action: Callable[[ClientConnection], object], error: type[Exception]
) -> None:
    proto = ClientConnection()
    with pytest.raises(error, match="awaiting HI"):
        action(proto)


def test_hello_twice_is_illegal() -> None:
    proto = greeted()
    with pytest.raises(LocalProtocolError, match="cannot send HELLO"):
        proto.send_hello(hostname="box", pid=1)


def test_reading_in_sending_hello_is_illegal() -> None:
    proto = ClientConnection()
    proto.receive_reply(HI)
    with pytest.raises(LocalProtocolError, match="owes nothing until HELLO"):
        proto.next_reply()


def test_reading_when_nothing_is_owed_is_illegal() -> None:
    proto = greeted()
    with pytest.raises(LocalProtocolError, match="no reply is owed"):
        proto.expect_reply()


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_one_reply_per_line_sent_in_order(chunks: Callable[[bytes], Iterator[bytes]]) -> None:
    proto = greeted()
    assert proto.send(LINE + encode_fetch("q") + encode_info(), 3) == (
        LINE + encode_fetch("q") + encode_info()
    )
    assert proto.owed == 3
    replies = feed(proto, b"+OK\r\n$-1\r\n$2\r\n{}\r\n", chunks)
    assert replies == [OK_REPLY, BulkReply(None), BulkReply(b"{}")]
    assert proto.owed == 0
    assert proto.ready


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_an_error_reply_keeps_the_connection(chunks: Callable[[bytes], Iterator[bytes]]) -> None:
    proto = greeted()
    proto.send(LINE)
    assert feed(proto, b"-ERR Job not found\r\n", chunks) == [ErrorReply("ERR", "Job not found")]
    assert proto.ready


def test_the_ok_shortcut_is_only_taken_when_it_is_the_whole_reply() -> None:
    proto = greeted()
    proto.send(LINE)
    assert proto.receive_reply(b"+O") is None
    assert started(proto)
    # "K\r\n" then completes the reply the parser holds; a second +OK segment would not
    # be this reply.
    assert proto.receive_reply(b"K\r\n") == SimpleReply("OK")
    assert proto.ready
    proto.send(LINE)
    assert not started(proto)
    assert proto.receive_reply(OK) is OK_REPLY


def test_trailing_data_keeps_the_reply_but_breaks_the_connection() -> None:
    proto = greeted()
    proto.send(LINE)
    assert proto.receive_reply(OK + b"+OK\r\n") == OK_REPLY
    assert state(proto) is ConnectionState.BROKEN
    with pytest.raises(ReadError, match="broken; open a new one"):
        proto.send(LINE)


def test_unasked_bytes_while_idle_break_the_connection() -> None:
    proto = greeted()
    proto.receive_data(b"+OK\r\n")
    assert proto.broken


def test_next_reply_on_an_unasked_reply_refuses_it() -> None:
    proto = greeted()
    proto.receive_data(OK)
    with pytest.raises(ReadError, match="broken"):
        proto.next_reply()


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_garbage_breaks_the_connection_for_good(
    chunks: Callable[[bytes], Iterator[bytes]],
) -> None:
    proto = greeted()
    proto.send(LINE)
    with pytest.raises(RemoteProtocolError):
        feed(proto, b"*3\r\n", chunks)
    assert proto.broken
    with pytest.raises(RemoteProtocolError):
        proto.next_reply()  # the same error, to every later reader
    with pytest.raises(ReadError, match="broken"):
        proto.send(LINE)


def test_the_server_closing_mid_reply_is_a_read_error_after_reply_bytes() -> None:
    proto = greeted()
    proto.send(LINE)
    assert proto.receive_reply(b"$10\r\n{") is None
    with pytest.raises(ReadError, match="tcp://test:7419 closed the connection"):
        proto.receive_reply(b"")
    assert proto.reply_started
    assert proto.broken


def test_the_server_closing_before_a_reply_is_a_read_error_without_reply_bytes() -> None:
    proto = greeted()
    proto.send(LINE)
    with pytest.raises(ReadError, match="closed the connection"):
        proto.receive_reply(b"")
    assert not proto.reply_started


def test_reply_started_follows_the_reply_being_waited_for() -> None:
    proto = greeted()
    proto.send(LINE + LINE, 2)
    assert not started(proto)
    assert proto.receive_reply(b"+OK\r\n+") == OK_REPLY
    assert started(proto)  # a byte of the second reply is here
    assert proto.receive_reply(b"OK\r\n") == OK_REPLY
    proto.send(LINE + LINE, 2)
    assert proto.receive_reply(OK) == OK_REPLY
    assert not proto.reply_started  # nothing of the second yet


def test_mark_broken_is_final() -> None:
    proto = greeted()
    proto.mark_broken()
    assert proto.broken
    with pytest.raises(ReadError, match="broken"):
        proto.send(LINE)
    with pytest.raises(ReadError, match="broken"):
        proto.expect_reply()


def test_end_closes_a_ready_connection_and_only_that() -> None:
    proto = greeted()
    assert proto.send_end() == encode_end()
    assert state(proto) is ConnectionState.CLOSED
    assert proto.send_end() == b""
    with pytest.raises(ReadError, match="closed; open a new one"):
        proto.send(LINE)
    broken = greeted()
    broken.mark_broken()
    assert broken.send_end() == b""
    assert broken.state is ConnectionState.BROKEN


def test_repr_names_the_state() -> None:
    assert repr(greeted()) == "<ClientConnection tcp://test:7419 ready owed=0>"
