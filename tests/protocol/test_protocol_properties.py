"""Property tests for the framing: encode -> parse round-trips under any chunking, and
hostile bytes only ever raise RemoteProtocolError."""

from __future__ import annotations

import itertools
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kaffi.errors import RemoteProtocolError
from kaffi.protocol.commands import encode_line
from kaffi.protocol.resp import (
    BulkReply,
    Command,
    CommandParser,
    ErrorReply,
    Reply,
    ReplyParser,
    SimpleReply,
    encode_reply,
)

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# One line of text: anything but the line breaks the encoders refuse.
line_text = st.text(
    st.characters(exclude_characters="\r\n", exclude_categories=["Cs"]), max_size=40
)
error_code = st.text(
    st.characters(exclude_characters="\r\n ", exclude_categories=["Cs"]), min_size=1, max_size=12
)
replies: st.SearchStrategy[Reply] = st.one_of(
    st.builds(SimpleReply, line_text),
    st.builds(BulkReply, st.none() | st.binary(max_size=60)),
    st.builds(ErrorReply, error_code, line_text),
)
verbs = st.text(
    st.sampled_from(string.ascii_letters + string.digits + string.punctuation),
    min_size=1,
    max_size=10,
)
command_lines = st.tuples(verbs, st.none() | line_text)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def drain_replies(parser: ReplyParser, limit: int) -> list[Reply]:
    # Every reply consumes at least one byte, so more than `limit` replies means a loop.
    out: list[Reply] = []
    while (reply := parser.next_reply()) is not None:
        out.append(reply)
        assert len(out) <= limit
    return out


def drain_commands(parser: CommandParser, limit: int) -> list[Command]:
    out: list[Command] = []
    while (command := parser.next_command()) is not None:
        out.append(command)
        assert len(out) <= limit
    return out


@PROPERTY_SETTINGS
@given(st.lists(replies, max_size=12), st.data())
def test_replies_round_trip_under_any_chunking(sequence: list[Reply], data: st.DataObject) -> None:
    stream = b"".join(encode_reply(r) for r in sequence)
    cuts = data.draw(st.lists(st.integers(0, max(len(stream), 0)), max_size=20))
    parser = ReplyParser()
    got: list[Reply] = []
    for chunk in split_at(stream, cuts):
        parser.feed(chunk)
        got.extend(drain_replies(parser, len(stream)))
    assert got == sequence
    assert parser.buffered == 0


@PROPERTY_SETTINGS
@given(st.lists(command_lines, max_size=12), st.data())
def test_command_lines_round_trip_under_any_chunking(
    lines: list[tuple[str, str | None]], data: st.DataObject
) -> None:
    stream = b"".join(encode_line(verb, arg) for verb, arg in lines)
    cuts = data.draw(st.lists(st.integers(0, max(len(stream), 0)), max_size=20))
    parser = CommandParser()
    got: list[Command] = []
    for chunk in split_at(stream, cuts):
        parser.feed(chunk)
        got.extend(drain_commands(parser, len(stream)))
    assert got == [Command(verb, arg) for verb, arg in lines]
    assert parser.buffered == 0


def _hostile_reply_stream(data: bytes, cuts: list[int], max_line: int, max_bulk: int) -> None:
    parser = ReplyParser(max_line=max_line, max_bulk=max_bulk)
    try:
        for chunk in split_at(data, cuts):
            parser.feed(chunk)
            drain_replies(parser, len(data))
    except RemoteProtocolError:
        # Once broken, it stays broken.
        try:
            parser.next_reply()
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("parser returned a reply after an error") from None
    # A fresh parser is unaffected by what the broken one saw.
    fresh = ReplyParser()
    fresh.feed(b"+OK\r\n$2\r\nhi\r\n")
    assert drain_replies(fresh, 10) == [SimpleReply("OK"), BulkReply(b"hi")]


@PROPERTY_SETTINGS
@given(
    st.binary(max_size=200),
    st.lists(st.integers(0, 200), max_size=10),
    st.integers(2, 64),
    st.integers(0, 64),
)
def test_random_bytes_only_raise_remote_protocol_error_in_reply_parser(
    data: bytes, cuts: list[int], max_line: int, max_bulk: int
) -> None:
    _hostile_reply_stream(data, cuts, max_line, max_bulk)


# Random bytes rarely look like RESP; flipping bytes of a valid stream reaches deeper states.
@PROPERTY_SETTINGS
@given(
    st.lists(replies, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.lists(st.integers(0, 400), max_size=10),
)
def test_mutated_reply_streams_only_raise_remote_protocol_error(
    sequence: list[Reply], flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    stream = bytearray(b"".join(encode_reply(r) for r in sequence))
    for where, value in flips:
        stream[where % len(stream)] = value
    _hostile_reply_stream(bytes(stream), cuts, 1024, 1024)


def _hostile_command_stream(data: bytes, cuts: list[int], max_line: int) -> None:
    parser = CommandParser(max_line=max_line)
    try:
        for chunk in split_at(data, cuts):
            parser.feed(chunk)
            drain_commands(parser, len(data))
    except RemoteProtocolError:
        try:
            parser.next_command()
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("parser returned a command after an error") from None
    fresh = CommandParser()
    fresh.feed(b"A B\r\n")
    assert drain_commands(fresh, 10) == [Command("A", "B")]


@PROPERTY_SETTINGS
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=10), st.integers(3, 64))
def test_random_bytes_only_raise_remote_protocol_error_in_command_parser(
    data: bytes, cuts: list[int], max_line: int
) -> None:
    _hostile_command_stream(data, cuts, max_line)
