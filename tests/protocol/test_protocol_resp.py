"""RESP framing: ReplyParser and CommandParser fed whole, byte by byte, in random chunks,
with trailing data; the caps; the broken state; the reply encoders."""

from __future__ import annotations

import itertools
import random

import pytest

from kaffi.errors import LocalProtocolError, RemoteProtocolError
from kaffi.protocol.resp import (
    BulkReply,
    Command,
    CommandParser,
    ErrorReply,
    Reply,
    ReplyParser,
    SimpleReply,
    encode_bulk,
    encode_error,
    encode_reply,
    encode_simple,
)

# Every kind of reply, with the exact bytes a Faktory server sends for it.
REPLY_CASES: list[tuple[bytes, Reply]] = [
    (b"+OK\r\n", SimpleReply("OK")),
    (b'+HI {"v":2}\r\n', SimpleReply('HI {"v":2}')),
    (b"+\r\n", SimpleReply("")),
    (b'$17\r\n{"state":"quiet"}\r\n', BulkReply(b'{"state":"quiet"}')),
    (b"$0\r\n\r\n", BulkReply(b"")),
    (b"$-1\r\n", BulkReply(None)),
    (
        b"-ERR must call fetch with at least one queue\r\n",
        ErrorReply("ERR", "must call fetch with at least one queue"),
    ),
    (
        b"-NOTUNIQUE Job has already been enqueued\r\n",
        ErrorReply("NOTUNIQUE", "Job has already been enqueued"),
    ),
    (b"-ERR\r\n", ErrorReply("ERR", "")),
    (b"$12\r\nab\r\ncd\r\n\r\nef\r\n", BulkReply(b"ab\r\ncd\r\n\r\nef")),
    (b"$2\r\n\r\n\r\n", BulkReply(b"\r\n")),
    (b"$4\r\n$-1\n\r\n", BulkReply(b"$-1\n")),
    ("+caf\u00e9 \u2615\r\n".encode(), SimpleReply("caf\u00e9 \u2615")),
]
CASE_IDS = [repr(raw[:24]) for raw, _ in REPLY_CASES]


def drain(parser: ReplyParser) -> list[Reply]:
    out: list[Reply] = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
    return out


def feed_chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# -- ReplyParser ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), REPLY_CASES, ids=CASE_IDS)
def test_reply_fed_whole(raw: bytes, expected: Reply) -> None:
    parser = ReplyParser()
    parser.feed(raw)
    assert parser.next_reply() == expected
    assert parser.next_reply() is None
    assert parser.buffered == 0


@pytest.mark.parametrize(("raw", "expected"), REPLY_CASES, ids=CASE_IDS)
def test_reply_fed_one_byte_at_a_time(raw: bytes, expected: Reply) -> None:
    parser = ReplyParser()
    got: list[Reply] = []
    for i in range(len(raw)):
        parser.feed(raw[i : i + 1])
        got.extend(drain(parser))
        if i < len(raw) - 1:
            # Nothing may come out before the last byte has arrived.
            assert got == [], f"reply emitted after {i + 1} of {len(raw)} bytes"
    assert got == [expected]
    assert parser.buffered == 0


@pytest.mark.parametrize(("raw", "expected"), REPLY_CASES, ids=CASE_IDS)
def test_reply_with_trailing_data_keeps_the_rest_buffered(raw: bytes, expected: Reply) -> None:
    parser = ReplyParser()
    trailing = b"$10\r\npartial"
    parser.feed(raw + trailing)
    assert parser.next_reply() == expected
    assert parser.buffered == len(trailing)
    assert parser.next_reply() is None
    assert parser.buffered == len(trailing)
    parser.feed(b"123\r\n+OK\r\n")
    assert parser.next_reply() == BulkReply(b"partial123")
    assert parser.buffered == len(b"+OK\r\n")
    assert parser.next_reply() == SimpleReply("OK")
    assert parser.buffered == 0


def test_all_replies_back_to_back_in_random_chunkings() -> None:
    stream = b"".join(raw for raw, _ in REPLY_CASES)
    expected = [reply for _, reply in REPLY_CASES]
    rng = random.Random(20261128)
    for _ in range(200):
        cuts = [rng.randrange(len(stream) + 1) for _ in range(rng.randrange(1, 40))]
        parser = ReplyParser()
        got: list[Reply] = []
        for chunk in feed_chunks(stream, cuts):
            parser.feed(chunk)
            got.extend(drain(parser))
        assert got == expected, f"cuts={sorted(cuts)}"
        assert parser.buffered == 0


def test_buffered_counts_only_unconsumed_bytes() -> None:
    parser = ReplyParser()
    assert parser.buffered == 0
    parser.feed(b"+OK\r\n+O")
    assert parser.buffered == 7
    assert parser.next_reply() == SimpleReply("OK")
    assert parser.buffered == 2
    assert parser.next_reply() is None
    parser.feed(b"K\r\n")
    assert parser.buffered == 5
    assert parser.next_reply() == SimpleReply("OK")
    assert parser.buffered == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"+OK\n", SimpleReply("OK")),
        (b"-ERR boom\n", ErrorReply("ERR", "boom")),
        (b"$-1\n", BulkReply(None)),
        (b"$3\nabc\n", BulkReply(b"abc")),
        (b"$3\nabc\r\n", BulkReply(b"abc")),
        (b"$3\r\nabc\n", BulkReply(b"abc")),
        (b"$0\n\n", BulkReply(b"")),
    ],
)
def test_bare_newline_line_ends_are_accepted(raw: bytes, expected: Reply) -> None:
    parser = ReplyParser()
    parser.feed(raw)
    assert parser.next_reply() == expected
    assert parser.buffered == 0


def test_bulk_ending_in_bare_newline_does_not_wait_for_another_byte() -> None:
    # The last reply on the wire: nothing follows, so waiting for a 2nd byte would hang.
    parser = ReplyParser()
    parser.feed(b"$5\r\nhello")
    assert parser.next_reply() is None
    parser.feed(b"\n")
    assert parser.next_reply() == BulkReply(b"hello")


def test_bulk_waits_for_the_newline_after_a_carriage_return() -> None:
    parser = ReplyParser()
    parser.feed(b"$5\r\nhello\r")
    assert parser.next_reply() is None
    assert parser.buffered == 10
    parser.feed(b"\n")
    assert parser.next_reply() == BulkReply(b"hello")


@pytest.mark.parametrize(
    "raw",
    [
        b"*1\r\n",  # RESP arrays are not part of Faktory's protocol
        b":1\r\n",
        b"\r\n",
        b"\n",
        b"OK\r\n",
        b"$abc\r\n",
        b"$\r\n",
        b"$-2\r\n",
        b"$ 3\r\nabc\r\n",
        b"$+3\r\nabc\r\n",
        b"$1_0\r\n0123456789\r\n",
        b"$3\r\r\nabc\r\n",
        b"$99999999999999999999999\r\n",
        b"$3\r\nabcd\r\n",
        b"$3\r\nabc\rx",
        b"$3\r\nabcX",
        b"- no code\r\n",
        b"+\xff\xfe\r\n",
        b"-ERR \xc3\r\n",
    ],
)
def test_garbage_raises_remote_protocol_error_and_the_parser_stays_broken(raw: bytes) -> None:
    parser = ReplyParser()
    parser.feed(raw)
    with pytest.raises(RemoteProtocolError):
        parser.next_reply()
    with pytest.raises(RemoteProtocolError, match="broken"):
        parser.next_reply()
    with pytest.raises(RemoteProtocolError, match="broken"):
        parser.feed(b"+OK\r\n")


def test_good_replies_before_garbage_are_still_delivered() -> None:
    parser = ReplyParser()
    parser.feed(b"+OK\r\n$-1\r\n!oops\r\n")
    assert parser.next_reply() == SimpleReply("OK")
    assert parser.next_reply() == BulkReply(None)
    with pytest.raises(RemoteProtocolError, match="unexpected reply type"):
        parser.next_reply()


def test_max_line_counts_the_line_without_its_end() -> None:
    for ending in (b"\r\n", b"\n"):
        parser = ReplyParser(max_line=5)
        parser.feed(b"+abcd" + ending)  # exactly 5 bytes before the line end
        assert parser.next_reply() == SimpleReply("abcd")
        parser = ReplyParser(max_line=5)
        parser.feed(b"+abcde" + ending)
        with pytest.raises(RemoteProtocolError, match="longer than 5"):
            parser.next_reply()


def test_max_line_rejects_an_unterminated_line_before_it_ends() -> None:
    parser = ReplyParser(max_line=8)
    parser.feed(b"+" + b"x" * 7)
    assert parser.next_reply() is None
    parser.feed(b"\r")  # may be the first half of \r\n: still within the cap
    assert parser.next_reply() is None
    parser = ReplyParser(max_line=8)
    parser.feed(b"+" + b"x" * 8)
    with pytest.raises(RemoteProtocolError, match="longer than 8"):
        parser.next_reply()
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"\r\n")


def test_max_bulk_caps_the_announced_length_before_the_body_arrives() -> None:
    parser = ReplyParser(max_bulk=10)
    parser.feed(b"$10\r\n0123456789\r\n")
    assert parser.next_reply() == BulkReply(b"0123456789")
    parser = ReplyParser(max_bulk=10)
    parser.feed(b"$11\r\n")  # refused without waiting for 11 bytes
    with pytest.raises(RemoteProtocolError, match="out of range"):
        parser.next_reply()
    with pytest.raises(RemoteProtocolError):
        parser.next_reply()


def test_bulk_body_may_be_longer_than_max_line() -> None:
    parser = ReplyParser(max_line=16, max_bulk=1000)
    body = b"x" * 500
    parser.feed(b"$500\r\n" + body[:100])
    assert parser.next_reply() is None
    parser.feed(body[100:] + b"\r\n")
    assert parser.next_reply() == BulkReply(body)


# -- CommandParser -------------------------------------------------------------------------

COMMAND_STREAM = (
    b'HELLO {"v":2,"hostname":"h"}\r\n'
    b"\r\n"
    b"FETCH critical default\n"
    b"\n\n"
    b"INFO\r\n"
    b"QUEUE PAUSE a b\r\n"
    b"PUSH \r\n"
    b"END\n"
)
COMMANDS = [
    Command("HELLO", '{"v":2,"hostname":"h"}'),
    Command("FETCH", "critical default"),
    Command("INFO", None),
    Command("QUEUE", "PAUSE a b"),
    Command("PUSH", ""),
    Command("END", None),
]


def drain_commands(parser: CommandParser) -> list[Command]:
    out: list[Command] = []
    while (command := parser.next_command()) is not None:
        out.append(command)
    return out


def test_commands_split_verb_and_argument_skipping_empty_lines() -> None:
    parser = CommandParser()
    parser.feed(COMMAND_STREAM)
    assert drain_commands(parser) == COMMANDS
    assert parser.buffered == 0


def test_commands_fed_one_byte_at_a_time() -> None:
    parser = CommandParser()
    got: list[Command] = []
    for i in range(len(COMMAND_STREAM)):
        parser.feed(COMMAND_STREAM[i : i + 1])
        got.extend(drain_commands(parser))
    assert got == COMMANDS


def test_commands_in_random_chunkings() -> None:
    rng = random.Random(7419)
    for _ in range(200):
        cuts = [rng.randrange(len(COMMAND_STREAM) + 1) for _ in range(rng.randrange(1, 30))]
        parser = CommandParser()
        got: list[Command] = []
        for chunk in feed_chunks(COMMAND_STREAM, cuts):
            parser.feed(chunk)
            got.extend(drain_commands(parser))
        assert got == COMMANDS, f"cuts={sorted(cuts)}"


def test_command_with_trailing_partial_line() -> None:
    parser = CommandParser()
    parser.feed(b"ACK {}\r\nFLU")
    assert parser.next_command() == Command("ACK", "{}")
    assert parser.next_command() is None
    assert parser.buffered == 3
    parser.feed(b"SH\r\n")
    assert parser.next_command() == Command("FLUSH", None)
    assert parser.buffered == 0


def test_only_the_first_space_splits() -> None:
    parser = CommandParser()
    parser.feed(b'MUTATE {"cmd": "kill"}\r\n')
    assert parser.next_command() == Command("MUTATE", '{"cmd": "kill"}')


def test_command_line_with_invalid_utf8_breaks_the_parser() -> None:
    parser = CommandParser()
    parser.feed(b"PUSH \xff\xfe\r\nINFO\r\n")
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        parser.next_command()
    with pytest.raises(RemoteProtocolError, match="broken"):
        parser.next_command()
    with pytest.raises(RemoteProtocolError, match="broken"):
        parser.feed(b"INFO\r\n")


def test_overlong_command_is_rejected_before_its_line_ends() -> None:
    parser = CommandParser(max_line=10)
    parser.feed(b"PUSH " + b"x" * 5)  # exactly 10 bytes, no line end yet
    assert parser.next_command() is None
    parser.feed(b"x")
    with pytest.raises(RemoteProtocolError, match="longer than 10"):
        parser.next_command()
    with pytest.raises(RemoteProtocolError, match="broken"):
        parser.next_command()


def test_command_max_line_excludes_the_line_end() -> None:
    for ending in (b"\r\n", b"\n"):
        parser = CommandParser(max_line=10)
        parser.feed(b"PUSH 12345" + ending)
        assert parser.next_command() == Command("PUSH", "12345")
        parser = CommandParser(max_line=10)
        parser.feed(b"PUSH 123456" + ending)
        with pytest.raises(RemoteProtocolError):
            parser.next_command()


def test_overlong_complete_command_after_a_good_one() -> None:
    parser = CommandParser(max_line=10)
    parser.feed(b"INFO\r\n" + b"Y" * 20 + b"\r\n")
    assert parser.next_command() == Command("INFO", None)
    with pytest.raises(RemoteProtocolError):
        parser.next_command()


# -- reply encoders ------------------------------------------------------------------------


def test_reply_encoders_exact_bytes() -> None:
    assert encode_simple("OK") == b"+OK\r\n"
    assert encode_bulk(b'{"a":1}') == b'$7\r\n{"a":1}\r\n'
    assert encode_bulk("\u00e9") == b"$2\r\n\xc3\xa9\r\n"
    assert encode_bulk(b"") == b"$0\r\n\r\n"
    assert encode_bulk(None) == b"$-1\r\n"
    assert encode_error("unknown worker w") == b"-ERR unknown worker w\r\n"
    assert encode_error("dup", code="NOTUNIQUE") == b"-NOTUNIQUE dup\r\n"
    for raw, reply in REPLY_CASES:
        if raw.endswith(b"\r\n") and raw != b"-ERR\r\n":
            assert encode_reply(reply) == raw
    assert encode_reply(ErrorReply("ERR", "")) == b"-ERR \r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_simple("a\r\nb"),
        lambda: encode_simple("a\nb"),
        lambda: encode_error("two\nlines"),
        lambda: encode_error("m", code=""),
        lambda: encode_error("m", code="TWO WORDS"),
        lambda: encode_error("m", code="E\r\nX"),
        lambda: encode_simple("\udcff"),
        lambda: encode_bulk("\udcff"),
    ],
)
def test_reply_encoders_refuse_what_would_break_framing(call: object) -> None:
    assert callable(call)
    with pytest.raises(LocalProtocolError):
        call()
