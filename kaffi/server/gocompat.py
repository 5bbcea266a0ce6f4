"""Error texts and value rules of the Go standard library, as Faktory 1.10.0 shows them.

Faktory is written in Go, so its ``-ERR`` replies quote Go's ``encoding/json`` and ``time``
packages word for word (``invalid JSON: invalid character 'n' looking for beginning of
object key string``). This module reproduces those texts and the number handling of Go's
JSON decoder, with no I/O:

- :func:`syntax_error`: the message Go's JSON scanner gives for text that is not JSON
  (only called once Python's own parser has refused the text, so the fast path stays C);
- :func:`loads`: JSON to Python values the way Go decodes into ``interface{}``: every
  number is a float64, so ``1.0`` reads back as ``1`` and ``NaN`` is refused;
- :func:`parse_rfc3339`: ``time.Parse(time.RFC3339Nano, value)`` with Go's error texts
  (the parsing itself is the protocol layer's one RFC 3339 parser);
- :func:`type_name`, :func:`unmarshal_type_error`: the words of Go's ``UnmarshalTypeError``;
- :func:`trim_and_cut`: ``strings.TrimSpace`` then a cut to N bytes of UTF-8, as Faktory
  keeps a FAIL's texts.
- :func:`dumps`: a document of dicts, lists, strings and numbers encoded the way Go's
  ``json.Marshal`` writes it (floats in Go's notation, no spaces).

It must never do I/O; from kaffi it imports only the protocol layer's rules.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from kaffi.protocol import models
from kaffi.protocol.commands import GO_SPACE

__all__ = [
    "GoJSONError",
    "dumps",
    "format_float",
    "loads",
    "syntax_error",
    "parse_rfc3339",
    "type_name",
    "unmarshal_type_error",
    "RFC3339_NANO",
    "trim_and_cut",
    "MAX_DEPTH",
]

RFC3339_NANO = "2006-01-02T15:04:05.999999999Z07:00"
#: Go's JSON scanner refuses nesting deeper than this.
MAX_DEPTH = 10000
_EOF = "unexpected end of JSON input"
_WS = " \t\r\n"


class GoJSONError(ValueError):
    """Text Go's ``encoding/json`` would refuse; ``str(exc)`` is Go's own message."""


# -- numbers ------------------------------------------------------------------------------


def _number(text: str) -> int | float:
    # Go decodes every JSON number held in an interface{} as a float64 and prints it back
    # in its shortest form, integers without a fraction: keep those as Python ints so
    # json.dumps writes what Go would (1.0 -> 1, 1e3 -> 1000).
    if len(text) <= 15 and "." not in text and "e" not in text and "E" not in text:
        return int(text)
    value = float(text)
    if math.isinf(value):
        raise GoJSONError(f"json: cannot unmarshal number {text} into Go value of type float64")
    if value.is_integer() and abs(value) < 1e21:
        return int(Decimal(repr(value)))
    return value


def format_float(value: float) -> str:
    """A float64 as Go's ``encoding/json`` writes it: the shortest digits that read back
    the same, in plain notation (``0.0000045``, ``2``), switching to an exponent only
    below 1e-6 or from 1e21 on, where it writes ``1e-7`` rather than C's ``1e-07``.

    Python's ``repr`` picks the same digits but switches to an exponent below 1e-4, so a
    scanner's ``wall_time_sec`` of a few microseconds would read differently from Go's."""
    if math.isnan(value) or math.isinf(value):
        raise GoJSONError(f"json: unsupported value: {value!r}")
    if value == 0:
        return "0"
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        text = repr(value)
        mantissa, _, exponent = text.partition("e")
        sign, digits = exponent[0], exponent[1:].lstrip("0") or "0"
        return f"{mantissa}e{sign}{digits}"
    text = format(Decimal(repr(value)), "f")
    return text[:-2] if text.endswith(".0") else text


#: What Go's json.Marshal escapes in strings beyond what Python's json.dumps does (it
#: keeps other non-ASCII text as UTF-8, like json.dumps(ensure_ascii=False)).
_GO_STRING_ESCAPES = str.maketrans(
    {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _go_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False).translate(_GO_STRING_ESCAPES)


def dumps(value: Any) -> str:
    """``value`` (dicts with string keys in the order to write, lists, strings, ints,
    floats, bools and None) as compact JSON the way Go's ``json.Marshal`` writes it:
    floats in Go's notation, strings in UTF-8 with ``<``, ``>`` and ``&`` escaped. Keys
    are written in the dict's order: Go sorts map keys, so callers build dicts in that
    order where Faktory encodes a map."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_string(k)}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, float):
        return format_float(value)
    return json.dumps(value)


def _constant(text: str) -> Any:
    # Python accepts NaN and Infinity; Go's scanner does not. Reaching here means the
    # text is not JSON as Go reads it, and syntax_error() finds the exact message.
    raise GoJSONError(syntax_error(text) or f"invalid character '{text[0]}'")


def loads(text: str) -> Any:
    """Parse JSON as Go's decoder would, raising :class:`GoJSONError` with Go's message."""
    try:
        return json.loads(text, parse_int=_number, parse_float=_number, parse_constant=_constant)
    except GoJSONError as exc:
        if str(exc).startswith("json: cannot unmarshal"):
            raise
        raise GoJSONError(syntax_error(text) or str(exc)) from None
    except (ValueError, RecursionError):
        message = syntax_error(text)
        if message is None:
            # Valid for Go, but nested deeper than Python's parser can follow.
            message = "exceeded max depth"
        raise GoJSONError(message) from None


def _quote_char(c: str) -> str:
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + json.dumps(c, ensure_ascii=False)[1:-1] + "'" if c.isprintable() else _go_quote(c)


def _go_quote(c: str) -> str:
    # strconv.Quote's escapes for a character it does not print as itself.
    code = ord(c)
    named = {"\a": "a", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t", "\v": "v"}
    if c in named:
        return "'\\" + named[c] + "'"
    if code < 0x20 or code == 0x7F:
        return f"'\\x{code:02x}'"
    if code < 0x10000:
        return f"'\\u{code:04x}'"
    return f"'\\U{code:08x}'"


def _bad(c: str, context: str) -> str:
    return f"invalid character {_quote_char(c)} {context}"


def syntax_error(text: str) -> str | None:
    """The message Go's JSON scanner gives for ``text``, or None when Go would accept it.

    Iterative (an explicit stack) so that hostile nesting cannot exhaust Python's stack.
    Go's scanner reads bytes, and names an offending byte as the character of that code
    (0xC3 is 'Ã'), so the text is looked at one UTF-8 byte per character.
    """
    text = text.encode("utf-8", "surrogatepass").decode("latin-1")
    n = len(text)
    i = 0
    # Each stack entry is the container we are inside: "{" or "[".
    stack: list[str] = []

    def skip_ws(j: int) -> int:
        while j < n and text[j] in _WS:
            j += 1
        return j

    # state "value": a value must start here; "after": a value just ended.
    state = "value"
    value_context = "looking for beginning of value"
    while True:
        i = skip_ws(i)
        if state == "value":
            if i >= n:
                return _EOF
            c = text[i]
            if c == "{":
                if len(stack) >= MAX_DEPTH:
                    return "exceeded max depth"
                stack.append("{")
                i = skip_ws(i + 1)
                if i >= n:
                    return _EOF
                if text[i] == "}":
                    stack.pop()
                    i += 1
                    state = "after"
                    continue
                err, i = _object_key(text, i)
                if err:
                    return err
                continue
            if c == "[":
                if len(stack) >= MAX_DEPTH:
                    return "exceeded max depth"
                stack.append("[")
                i = skip_ws(i + 1)
                if i >= n:
                    return _EOF
                if text[i] == "]":
                    stack.pop()
                    i += 1
                    state = "after"
                    continue
                value_context = "looking for beginning of value"
                continue
            if c == '"':
                err, i = _string(text, i)
            elif c == "-" or "0" <= c <= "9":
                err, i = _numeral(text, i)
            elif c in "tfn":
                err, i = _literal(text, i)
            else:
                return _bad(c, value_context)
            if err:
                return err
            state = "after"
            continue
        # state == "after"
        if not stack:
            if i < n:
                return _bad(text[i], "after top-level value")
            return None
        if i >= n:
            return _EOF
        c = text[i]
        top = stack[-1]
        if top == "{":
            if c == ",":
                i = skip_ws(i + 1)
                if i >= n:
                    return _EOF
                err, i = _object_key(text, i)
                if err:
                    return err
                state = "value"
                continue
            if c == "}":
                stack.pop()
                i += 1
                continue
            return _bad(c, "after object key:value pair")
        if c == ",":
            i += 1
            state = "value"
            value_context = "looking for beginning of value"
            continue
        if c == "]":
            stack.pop()
            i += 1
            continue
        return _bad(c, "after array element")


def _object_key(text: str, i: int) -> tuple[str | None, int]:
    """At a key: read ``"key"`` and the colon; leave ``i`` where the value starts."""
    n = len(text)
    if text[i] != '"':
        return _bad(text[i], "looking for beginning of object key string"), i
    err, i = _string(text, i)
    if err:
        return err, i
    while i < n and text[i] in _WS:
        i += 1
    if i >= n:
        return _EOF, i
    if text[i] != ":":
        return _bad(text[i], "after object key"), i
    return None, i + 1


def _string(text: str, i: int) -> tuple[str | None, int]:
    n = len(text)
    i += 1
    while True:
        if i >= n:
            return _EOF, i
        c = text[i]
        if c == '"':
            return None, i + 1
        if c == "\\":
            i += 1
            if i >= n:
                return _EOF, i
            e = text[i]
            if e == "u":
                for _ in range(4):
                    i += 1
                    if i >= n:
                        return _EOF, i
                    if text[i] not in "0123456789abcdefABCDEF":
                        return _bad(text[i], "in \\u hexadecimal character escape"), i
            elif e not in 'bfnrt\\/"':
                return _bad(e, "in string escape code"), i
        elif c < " ":
            return _bad(c, "in string literal"), i
        i += 1


def _numeral(text: str, i: int) -> tuple[str | None, int]:
    n = len(text)
    if text[i] == "-":
        i += 1
        if i >= n:
            return _EOF, i
        if not "0" <= text[i] <= "9":
            return _bad(text[i], "in numeric literal"), i
    if text[i] == "0":
        i += 1
    else:
        while i < n and "0" <= text[i] <= "9":
            i += 1
    if i < n and text[i] == ".":
        i += 1
        if i >= n:
            return _EOF, i
        if not "0" <= text[i] <= "9":
            return _bad(text[i], "after decimal point in numeric literal"), i
        while i < n and "0" <= text[i] <= "9":
            i += 1
    if i < n and text[i] in "eE":
        i += 1
        if i < n and text[i] in "+-":
            i += 1
        if i >= n:
            return _EOF, i
        if not "0" <= text[i] <= "9":
            return _bad(text[i], "in exponent of numeric literal"), i
        while i < n and "0" <= text[i] <= "9":
            i += 1
    return None, i


def _literal(text: str, i: int) -> tuple[str | None, int]:
    word = {"t": "true", "f": "false", "n": "null"}[text[i]]
    for k in range(1, len(word)):
        j = i + k
        if j >= len(text):
            return _EOF, j
        if text[j] != word[k]:
            return _bad(text[j], f"in literal {word} (expecting '{word[k]}')"), j
    return None, i + len(word)


# -- UnmarshalTypeError -------------------------------------------------------------------


def type_name(value: Any) -> str:
    """How Go's decoder names the JSON kind of ``value`` in an ``UnmarshalTypeError``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    return "object"


def unmarshal_type_error(kind: str, struct: str, field: str, go_type: str) -> str:
    """Go's ``encoding/json`` text for a value of the wrong type in a struct field."""
    return f"json: cannot unmarshal {kind} into Go struct field {struct}.{field} of type {go_type}"


# -- time.Parse(time.RFC3339Nano, ...) ----------------------------------------------------


def _time_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
    out.append('"')
    return "".join(out)


class _TimeError(ValueError):
    pass


def _cannot(value: str, elem_value: str, elem_layout: str) -> _TimeError:
    return _TimeError(
        f"parsing time {_time_quote(value)} as {_time_quote(RFC3339_NANO)}: "
        f"cannot parse {_time_quote(elem_value)} as {_time_quote(elem_layout)}"
    )


def _range(value: str, what: str) -> _TimeError:
    return _TimeError(f"parsing time {_time_quote(value)}: {what} out of range")


def parse_rfc3339(value: str) -> datetime:
    """Parse ``value`` like Go's ``time.Parse(time.RFC3339Nano, value)``.

    The parsing is :func:`kaffi.protocol.models.parse_rfc3339`'s (in its Go mode); this
    adds Go's error text, raised as ``ValueError``, so a server can quote it.
    """
    try:
        return models.parse_rfc3339(value, go=True)
    except models.RFC3339Error as exc:
        if exc.kind == "syntax":
            raise _cannot(value, exc.rest, exc.layout) from None
        if exc.kind == "range":
            raise _range(value, exc.what) from None
        raise _TimeError(
            f"parsing time {_time_quote(value)}: extra text: {_time_quote(exc.rest)}"
        ) from None


# -- strings.TrimSpace and s[:n] ------------------------------------------------------------

#: The lone surrogates ``surrogateescape`` decodes invalid UTF-8 bytes to, one per byte.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def trim_and_cut(text: str, limit: int) -> str:
    """``strings.TrimSpace(text)`` cut to ``limit`` bytes of UTF-8, as Faktory keeps a
    FAIL's errtype and message.

    Go trims Unicode white space only (``GO_SPACE``: not the ``\\x1c``-``\\x1f`` that
    Python's ``str.strip()`` also removes), and ``s[:limit]`` cuts bytes, not characters:
    a character cut in two leaves bytes that Go's JSON encoder writes as one U+FFFD each.
    """
    text = text.strip(GO_SPACE)
    if len(text) <= limit and text.isascii():
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return _ESCAPED_BYTE.sub("\ufffd", data[:limit].decode("utf-8", "surrogateescape"))
