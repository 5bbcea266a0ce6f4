"""The sync Connection against the fake server: handshake, password, replies, and every way
the transport can fail (each must end in a clear kaffi error within the deadline)."""

from __future__ import annotations

import json
import os
import time

import pytest

from kaffi.client import Connection, resolve_settings
from kaffi.client.config import ConnectionSettings
from kaffi.errors import (
    AuthenticationError,
    ConnectError,
    ConnectTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    ServerError,
)
from kaffi.protocol.commands import decode_fetch, encode_ack, encode_fetch, encode_info
from kaffi.protocol.resp import BulkReply, ErrorReply, SimpleReply
from tests.support import CLOSE, SILENT, FakeFaktory, closed_port_url, expected_pwdhash, wait_until


def settings(server: FakeFaktory, **options: float) -> ConnectionSettings:
    return resolve_settings(server.url, timeout=options.get("timeout", 5), connect_timeout=2)


def test_handshake_sends_hello_with_worker_fields(fake: FakeFaktory) -> None:
    conn = Connection.open(settings(fake), wid="w-1", labels=("a", "b"), hostname="box")
    try:
        hello = json.loads(fake.commands("HELLO")[0].split(" ", 1)[1])
        assert hello == {
            "v": 2,
            "hostname": "box",
            "wid": "w-1",
            "pid": os.getpid(),
            "labels": ["a", "b"],
        }
        assert conn.wid == "w-1"
        assert conn.hi.v == 2
    finally:
        conn.close()


def test_producer_hello_has_no_worker_fields(fake: FakeFaktory) -> None:
    conn = Connection.open(settings(fake))
    conn.close()
    hello = json.loads(fake.commands("HELLO")[0].split(" ", 1)[1])
    assert set(hello) == {"v", "hostname"}


def test_request_returns_replies_of_every_kind(fake: FakeFaktory) -> None:
    fake.script("INFO", b"-NOTUNIQUE job exists\r\n")
    conn = Connection.open(settings(fake))
    try:
        assert conn.request(encode_ack("jid-00000001")) == SimpleReply("OK")
        assert conn.request(encode_fetch("nothing")) == BulkReply(None)
        assert conn.request(encode_info()) == ErrorReply("NOTUNIQUE", "job exists")
        assert not conn.broken
    finally:
        conn.close()


def test_pipeline_reads_one_reply_per_line_in_order(fake: FakeFaktory) -> None:
    fake.queues["q"].append({"jid": "jid-00000001", "jobtype": "A", "args": []})
    conn = Connection.open(settings(fake))
    try:
        ack, fetched, empty = conn.pipeline(
            [encode_ack("jid-00000000"), encode_fetch("q"), encode_fetch("q")]
        )
        assert ack == SimpleReply("OK")
        job = decode_fetch(fetched)
        assert job is not None
        assert job.jid == "jid-00000001"
        assert empty == BulkReply(None)
        assert conn.pipeline([]) == []
    finally:
        conn.close()


def test_close_sends_end(fake: FakeFaktory) -> None:
    conn = Connection.open(settings(fake))
    conn.close()
    fake.wait_for(lambda: fake.sessions[0].ended)
    assert conn.broken
    conn.close()  # twice is harmless


def test_password_is_hashed_with_salt_and_iterations() -> None:
    with FakeFaktory(password="s3cr3t", salt="abc123", iterations=1545) as server:
        conn = Connection.open(settings(server))
        conn.close()
        hello = json.loads(server.commands("HELLO")[0].split(" ", 1)[1])
        assert hello["pwdhash"] == expected_pwdhash("s3cr3t", "abc123", 1545)


def test_wrong_password_is_an_authentication_error_naming_the_password() -> None:
    with FakeFaktory(password="right") as server:
        wrong = resolve_settings(server.url, password="wrong", connect_timeout=2)
        with pytest.raises(AuthenticationError) as info:
            Connection.open(wrong)
        assert "password" in str(info.value)
        assert info.value.message == "Invalid password"
        assert "wrong" not in str(info.value)


def test_missing_password_is_refused_before_sending_hello() -> None:
    with FakeFaktory(password="right") as server:
        no_password = resolve_settings(f"tcp://127.0.0.1:{server.port}", connect_timeout=2)
        with pytest.raises(AuthenticationError, match="password"):
            Connection.open(no_password)
        assert server.commands("HELLO") == []


def test_connection_refused() -> None:
    with pytest.raises(ConnectError, match="could not connect"):
        Connection.open(resolve_settings(closed_port_url(), connect_timeout=2))


def test_silent_server_at_connect_is_a_connect_timeout() -> None:
    with FakeFaktory(greeting=b"") as server:
        s = resolve_settings(server.url, connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(ConnectTimeout):
            Connection.open(s)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "greeting",
    [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"+HELLO there\r\n", b'+HI {"v":3}\r\n', b"+HI {v}\r\n"],
)
def test_garbage_greeting_is_a_protocol_error(greeting: bytes) -> None:
    with FakeFaktory(greeting=greeting) as server, pytest.raises(RemoteProtocolError):
        Connection.open(settings(server))


def test_server_refusing_hello_is_a_server_error(fake: FakeFaktory) -> None:
    fake.script("HELLO", b"-ERR too many connections: 2001\r\n")
    with pytest.raises(ServerError) as info:
        Connection.open(settings(fake))
    assert info.value.message == "too many connections: 2001"


def test_server_closing_during_handshake(fake: FakeFaktory) -> None:
    fake.script("HELLO", CLOSE)
    with pytest.raises(ConnectError, match="closed the connection during HI/HELLO"):
        Connection.open(settings(fake))


def test_garbage_reply_poisons_the_connection(fake: FakeFaktory) -> None:
    fake.script("INFO", b"*3\r\n")
    conn = Connection.open(settings(fake))
    with pytest.raises(RemoteProtocolError):
        conn.request(encode_info())
    assert conn.broken
    with pytest.raises(ReadError, match="broken"):
        conn.request(encode_info())
    conn.close()


def test_truncated_reply_is_a_read_error_after_reply_bytes(fake: FakeFaktory) -> None:
    fake.script("INFO", (b"$100\r\n{partial", CLOSE))
    conn = Connection.open(settings(fake))
    with pytest.raises(ReadError, match="closed the connection"):
        conn.request(encode_info())
    assert conn.broken
    assert conn.reply_started
    conn.close()


def test_close_before_reply_is_a_read_error_without_reply_bytes(fake: FakeFaktory) -> None:
    fake.script("INFO", CLOSE)
    conn = Connection.open(settings(fake))
    with pytest.raises(ReadError):
        conn.request(encode_info())
    assert not conn.reply_started
    conn.close()


def test_silent_server_is_a_read_timeout(fake: FakeFaktory) -> None:
    fake.script("INFO", SILENT)
    conn = Connection.open(settings(fake, timeout=0.3))
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        conn.request(encode_info())
    assert time.monotonic() - started < 5
    assert conn.broken
    conn.close()


def test_trickling_server_cannot_extend_the_deadline(fake: FakeFaktory) -> None:
    # Half a reply, then silence: the deadline covers the whole reply, not each read.
    fake.script("INFO", (b"$50\r\n{", SILENT))
    conn = Connection.open(settings(fake, timeout=0.3))
    with pytest.raises(ReadTimeout):
        conn.request(encode_info())
    conn.close()


def test_custom_deadline_for_one_request(fake: FakeFaktory) -> None:
    fake.script("FETCH", SILENT)
    conn = Connection.open(settings(fake, timeout=5))
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        conn.request(encode_fetch("q"), timeout=0.2)
    assert time.monotonic() - started < 4
    conn.close()


def test_extra_bytes_after_a_reply_keep_the_reply_but_poison_the_connection(
    fake: FakeFaktory,
) -> None:
    fake.script("ACK", b"+OK\r\n+OK\r\n")
    conn = Connection.open(settings(fake))
    reply = conn.request(encode_ack("jid-00000001"))
    assert reply == SimpleReply("OK")
    assert conn.broken
    conn.close()


def test_is_stale_notices_a_closed_server(fake: FakeFaktory) -> None:
    conn = Connection.open(settings(fake))
    assert not conn.is_stale()
    fake.drop_connections()
    wait_until(conn.is_stale, "the closed connection to look stale")
    assert conn.broken
    conn.close()


def test_repr_shows_state(fake: FakeFaktory) -> None:
    conn = Connection.open(settings(fake), wid="w")
    assert "open" in repr(conn)
    conn.close()
    assert "broken" in repr(conn)
