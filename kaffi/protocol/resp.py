"""RESP framing as Faktory uses it, for both ends of a connection, with no I/O.

Faktory speaks a subset of Redis's RESP:

- a client sends one command per line, ``VERB[ ARG]\\r\\n``;
- a server answers ``+TEXT\\r\\n`` (simple), ``$LEN\\r\\nBODY\\r\\n`` (bulk), ``$-1\\r\\n``
  (null bulk) or ``-CODE message\\r\\n`` (error; ``CODE`` is ``ERR`` for most errors).

:class:`ReplyParser` (client side) and :class:`CommandParser` (server side) are fed bytes
as they arrive and hand out whole frames; they never read a socket themselves. Anything
that is not valid RESP raises :class:`~kaffi.errors.RemoteProtocolError`, and after that
the parser refuses further use: the byte stream can no longer be trusted.

Rules worth knowing:

- A line may end in ``\\n`` alone; the ``\\r`` is optional on input (Faktory is lenient in
  the same way) and always written on output.
- Lines are capped (``max_line`` bytes, not counting the line end) so a peer cannot make
  us buffer without limit; bulk bodies have their own cap (``max_bulk``).
"""

from __future__ import annotations

from dataclasses import dataclass

from kaffi.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "SimpleReply",
    "BulkReply",
    "ErrorReply",
    "Reply",
    "Command",
    "ReplyParser",
    "CommandParser",
    "encode_simple",
    "encode_bulk",
    "encode_error",
    "encode_reply",
    "DEFAULT_MAX_LINE",
    "DEFAULT_MAX_BULK",
]

#: Longest simple/error reply line or command line accepted. Faktory jobs travel on one
#: line, so this also bounds a single PUSH; 16 MiB matches what real deployments push.
DEFAULT_MAX_LINE = 16 * 1024 * 1024
#: Largest bulk body accepted (a big PUSHB rejection map or INFO).
DEFAULT_MAX_BULK = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class SimpleReply:
    """``+TEXT``: ``text`` without the ``+`` and the line end."""

    text: str


@dataclass(frozen=True, slots=True)
class BulkReply:
    """``$LEN`` + body, or ``$-1`` (``data is None``)."""

    data: bytes | None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """``-CODE message``. ``code`` is ``"ERR"`` for ordinary errors."""

    code: str
    message: str


Reply = SimpleReply | BulkReply | ErrorReply


@dataclass(frozen=True, slots=True)
class Command:
    """One command line as a server receives it: the verb, then everything after one space."""

    verb: str
    arg: str | None


def _pending_line_too_long(buf: bytearray, pos: int, max_line: int) -> bool:
    """True when the unterminated line at ``pos`` is already known to exceed ``max_line``.

    ``max_line`` counts the line's bytes without its line end, so a trailing ``\r`` that
    may be the first half of ``\r\n`` is not held against it.
    """
    pending = len(buf) - pos
    if pending and buf[-1] == 0x0D:
        pending -= 1
    return pending > max_line


def _parse_bulk_length(body: bytes) -> int | None:
    # Strict like Redis and Faktory: ASCII digits, or the null marker -1. Python's int()
    # would also take " 5", "+5" and "1_0", which no server sends.
    if body == b"-1":
        return -1
    if not body or len(body) > 19 or not body.isdigit():
        return None
    return int(body)


class _StreamBuffer:
    """What both parsers share: the byte buffer, ``feed``, ``buffered``, and the rule
    that a stream found broken stays broken."""

    __slots__ = ("_broken", "_buf", "_pos", "max_line")
    #: Which stream this is, for messages ("reply" or "command").
    _stream = "byte"

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._broken = False
        self.max_line = max_line

    def feed(self, data: bytes) -> None:
        """Add bytes as they arrived, in any chunking; refused once the stream is broken."""
        if self._broken:
            raise RemoteProtocolError(f"the {self._stream} stream was already found broken")
        if self._pos:
            # Compact lazily: drop consumed bytes only when we are about to grow.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """How many bytes are held that no returned frame has consumed yet."""
        return len(self._buf) - self._pos

    def _line_at(self, buf: bytearray, pos: int) -> tuple[int, int] | None:
        """The line starting at ``pos``: where its text ends (before ``\r\n`` or ``\n``)
        and where its ``\n`` is, or None until it is complete. A line over ``max_line``
        bytes, complete or not yet, breaks the stream."""
        end = buf.find(b"\n", pos)
        if end < 0:
            if _pending_line_too_long(buf, pos, self.max_line):
                raise self._fail(f"{self._stream} line longer than {self.max_line} bytes")
            return None
        line_end = end - 1 if end > pos and buf[end - 1] == 0x0D else end
        if line_end - pos > self.max_line:
            raise self._fail(f"{self._stream} line longer than {self.max_line} bytes")
        return line_end, end

    def _fail(self, message: str) -> RemoteProtocolError:
        self._broken = True
        return RemoteProtocolError(message)


class ReplyParser(_StreamBuffer):
    """Turns the bytes a server sends into :data:`Reply` frames.

    ``feed()`` bytes in any chunking, then call ``next_reply()`` until it returns ``None``
    (more bytes needed).
    """

    __slots__ = ("max_bulk",)
    _stream = "reply"

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE, max_bulk: int = DEFAULT_MAX_BULK):
        super().__init__(max_line=max_line)
        self.max_bulk = max_bulk

    def next_reply(self) -> Reply | None:
        """The next whole reply, or None until more bytes are fed. Raises
        RemoteProtocolError on bytes that are not RESP (and every call after that)."""
        if self._broken:
            raise RemoteProtocolError("the reply stream was already found broken")
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            return None
        found = self._line_at(buf, pos)
        if found is None:
            return None
        line_end, end = found
        kind = buf[pos]
        body = bytes(buf[pos + 1 : line_end])
        if kind == 0x2B:  # '+'
            self._pos = end + 1
            return SimpleReply(self._text(body))
        if kind == 0x2D:  # '-'
            self._pos = end + 1
            text = self._text(body)
            code, _, message = text.partition(" ")
            if not code:
                raise self._fail(f"error reply without a code: {text!r}")
            return ErrorReply(code, message)
        if kind == 0x24:  # '$'
            length = _parse_bulk_length(body)
            if length is None:
                raise self._fail(f"bad bulk length {body[:40]!r}")
            if length == -1:
                self._pos = end + 1
                return BulkReply(None)
            if length < 0 or length > self.max_bulk:
                raise self._fail(f"bulk length {length} out of range")
            start = end + 1
            body_end = start + length
            # The body ends in \r\n, or a bare \n (accepted like every other line end);
            # a bare \n must not wait for a second byte that may never come.
            if len(buf) <= body_end:
                return None
            first = buf[body_end]
            if first == 0x0A:
                self._pos = body_end + 1
            elif first != 0x0D:
                raise self._fail("bulk body not followed by a line end")
            elif len(buf) <= body_end + 1:
                return None
            elif buf[body_end + 1] == 0x0A:
                self._pos = body_end + 2
            else:
                raise self._fail("bulk body not followed by a line end")
            return BulkReply(bytes(buf[start:body_end]))
        raise self._fail(f"unexpected reply type byte {bytes([kind])!r}")

    def _text(self, body: bytes) -> str:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("reply line is not valid UTF-8") from None


class CommandParser(_StreamBuffer):
    """Turns the bytes a client sends into :class:`Command` frames (the server's side).

    A line over ``max_line`` bytes raises :class:`RemoteProtocolError` as soon as it is
    known to be too long, without waiting for its end: a server answers ``-ERR`` and
    closes. Invalid UTF-8 is an error too. Empty lines are skipped, as Faktory does.
    """

    __slots__ = ()
    _stream = "command"

    def next_command(self) -> Command | None:
        """The next whole command line, or None until more bytes are fed. Raises
        RemoteProtocolError for a line over ``max_line`` or invalid UTF-8 (and every call
        after that)."""
        if self._broken:
            raise RemoteProtocolError("the command stream was already found broken")
        while True:
            buf, pos = self._buf, self._pos
            found = self._line_at(buf, pos)
            if found is None:
                return None
            line_end, end = found
            raw = bytes(buf[pos:line_end])
            self._pos = end + 1
            if not raw:
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise self._fail("command line is not valid UTF-8") from None
            verb, sep, arg = line.partition(" ")
            return Command(verb, arg if sep else None)


def _check_line(text: str) -> None:
    if "\n" in text or "\r" in text:
        raise LocalProtocolError(f"a reply line cannot contain a line break: {text[:60]!r}")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from surrogateescape-decoded bytes) have no UTF-8 form.
        raise LocalProtocolError(f"text is not encodable as UTF-8: {text[:60]!r}") from None


def encode_simple(text: str) -> bytes:
    """``+TEXT\\r\\n``."""
    _check_line(text)
    return b"+" + _utf8(text) + b"\r\n"


def encode_bulk(data: bytes | str | None) -> bytes:
    """``$LEN\\r\\nBODY\\r\\n``, or ``$-1\\r\\n`` for ``None``."""
    if data is None:
        return b"$-1\r\n"
    if isinstance(data, str):
        data = _utf8(data)
    return b"$%d\r\n%s\r\n" % (len(data), data)


def encode_error(message: str, code: str = "ERR") -> bytes:
    """``-CODE message\\r\\n``."""
    _check_line(message)
    if not code or " " in code or "\n" in code or "\r" in code:
        raise LocalProtocolError(f"bad error code {code!r}")
    return b"-" + _utf8(code) + b" " + _utf8(message) + b"\r\n"


def encode_reply(reply: Reply) -> bytes:
    """Bytes for any :data:`Reply` (the inverse of :class:`ReplyParser`)."""
    if isinstance(reply, SimpleReply):
        return encode_simple(reply.text)
    if isinstance(reply, BulkReply):
        return encode_bulk(reply.data)
    return encode_error(reply.message, reply.code)
