"""The sync Connection's per-command fast path: kernel deadlines (a blocking socket with
SO_RCVTIMEO, one non-blocking send) and the ``+OK`` shortcut. Each must behave exactly
like the general path: other replies, replies split across segments, extra bytes, a
peer that stops reading, a peer that hangs up half way."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from kaffi.client import Client, Connection, resolve_settings
from kaffi.client import connection as connection_module
from kaffi.errors import ReadError, ReadTimeout, ServerError, WriteTimeout
from kaffi.protocol.commands import encode_ack
from kaffi.protocol.connection import ClientConnection
from kaffi.protocol.resp import ErrorReply, SimpleReply
from tests.support import FakeFaktory

LINE = encode_ack("jid-00000001")


def greeted() -> ClientConnection:
    """The protocol state of a connection past HI/HELLO."""
    proto = ClientConnection()
    proto.receive_reply(b'+HI {"v":2}\r\n')
    proto.send_hello(hostname="test", pid=1)
    assert proto.receive_reply(b"+OK\r\n") == SimpleReply("OK")
    return proto


@pytest.fixture
def pair() -> Iterator[tuple[Connection, socket.socket]]:
    """A greeted-looking Connection on one end of a socket pair; the test is the server."""
    ours, theirs = socket.socketpair()
    theirs.settimeout(10)
    conn = Connection(ours, resolve_settings("tcp://127.0.0.1:7419", timeout=5), greeted())
    conn._start_deadlines()
    yield conn, theirs
    conn.abandon()
    theirs.close()


def read_line(peer: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = peer.recv(65536)
        assert chunk, "the client hung up"
        data += chunk
    return data


def answer_after_the_command(peer: socket.socket, reply: bytes) -> threading.Thread:
    """Send ``reply`` once the command arrived: the client is then already reading."""

    def serve() -> None:
        read_line(peer)
        peer.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not connection_module.KERNEL_DEADLINES, reason="Linux only")
def test_plain_connections_keep_their_deadlines_in_the_kernel(fake: FakeFaktory) -> None:
    conn = Connection.open(resolve_settings(fake.url, timeout=5, connect_timeout=2))
    try:
        assert conn._kernel_deadlines
        assert conn._sock.gettimeout() is None
        assert conn.request(LINE) == SimpleReply("OK")
    finally:
        conn.close()


def test_ok_in_one_segment(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    thread = answer_after_the_command(peer, b"+OK\r\n")
    assert conn.request(LINE) == SimpleReply("OK")
    thread.join(10)
    assert conn.reply_started
    assert not conn.broken


def test_ok_split_across_segments(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    peer.sendall(b"+O")  # waiting before the command: the first read gets only this
    thread = answer_after_the_command(peer, b"K\r\n")
    assert conn.request(LINE) == SimpleReply("OK")
    thread.join(10)
    assert not conn.broken
    # The connection is still in step: the next command gets its own reply.
    thread = answer_after_the_command(peer, b"+OK\r\n")
    assert conn.request(LINE) == SimpleReply("OK")
    thread.join(10)


def test_an_error_is_not_mistaken_for_ok(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    thread = answer_after_the_command(peer, b"-ERR boom\r\n")
    assert conn.request(LINE) == ErrorReply("ERR", "boom")
    thread.join(10)
    assert not conn.broken


def test_other_simple_replies_are_parsed(pair: tuple[Connection, socket.socket]) -> None:
    conn, peer = pair
    thread = answer_after_the_command(peer, b"+OKAY\r\n")
    assert conn.request(LINE) == SimpleReply("OKAY")
    thread.join(10)


def test_ok_with_extra_bytes_keeps_the_reply_but_poisons(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, peer = pair
    thread = answer_after_the_command(peer, b"+OK\r\n+OK\r\n")
    assert conn.request(LINE) == SimpleReply("OK")
    thread.join(10)
    assert conn.broken


def test_half_an_ok_then_hang_up_is_a_read_error_after_reply_bytes(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, peer = pair
    peer.sendall(b"+O")

    def hang_up() -> None:
        read_line(peer)
        peer.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    with pytest.raises(ReadError):
        conn.request(LINE)
    thread.join(10)
    assert conn.reply_started
    assert conn.broken


def test_pipelined_oks_keep_the_second_for_the_next_read(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, peer = pair
    conn.write(LINE + LINE)
    assert read_line(peer).count(b"\r\n") in (1, 2)
    peer.sendall(b"+OK\r\n+OK\r\n")
    assert conn.read_reply() == SimpleReply("OK")
    assert conn.read_reply() == SimpleReply("OK")
    assert not conn.broken


def test_a_read_deadline_still_ends_a_silent_wait(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, _peer = pair
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        conn.request(LINE, timeout=0.2)
    assert time.monotonic() - started < 4
    assert conn.broken


def test_a_large_command_is_written_as_the_peer_drains_it(
    pair: tuple[Connection, socket.socket],
) -> None:
    conn, peer = pair
    line = b"PUSH " + b"x" * (8 * 1024 * 1024) + b"\r\n"  # far beyond the socket buffers
    received = answer_after_the_command(peer, b"+OK\r\n")
    assert conn.request(line) == SimpleReply("OK")
    received.join(10)
    assert not conn.broken


def test_a_peer_that_stops_reading_is_a_write_timeout() -> None:
    ours, theirs = socket.socketpair()
    try:
        conn = Connection(ours, resolve_settings("tcp://127.0.0.1:7419", timeout=0.3), greeted())
        conn._start_deadlines()
        started = time.monotonic()
        with pytest.raises(WriteTimeout):
            conn.request(b"PUSH " + b"x" * (8 * 1024 * 1024) + b"\r\n")
        assert time.monotonic() - started < 5
        assert conn.broken
        assert not conn.reply_started
    finally:
        ours.close()
        theirs.close()


def test_timeval_is_never_zero() -> None:
    assert struct.unpack("@ll", connection_module._timeval(0)) == (0, 1)
    assert struct.unpack("@ll", connection_module._timeval(1.5)) == (1, 500_000)
    assert struct.unpack("@ll", connection_module._timeval(10)) == (10, 0)


def test_client_push_raises_a_server_error_not_ok(fake: FakeFaktory) -> None:
    fake.script("PUSH", b"-ERR nope\r\n")
    with Client(fake.url, timeout=5, connect_timeout=5) as client:
        with pytest.raises(ServerError, match="nope"):
            client.push({"jobtype": "x"})
        # The connection stays in the pool and the next push succeeds.
        assert len(client.push({"jobtype": "x"})) == 24
        assert client.pool.idle == 1
