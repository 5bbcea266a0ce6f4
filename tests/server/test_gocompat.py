"""Go's JSON and time rules, reproduced without Go: agreement with a real parser."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaffi.server import gocompat

JSON_ALPHABET = st.sampled_from([*'{}[]",:.-+eE0123456789 \t\ntruefalsnl\\/ubx', "\x01", "é"])


def _python_accepts(text: str) -> bool:
    def refuse(_: str) -> None:
        raise ValueError("not JSON for Go")

    try:
        json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    return True


@settings(max_examples=2000, deadline=None)
@given(st.text(JSON_ALPHABET, max_size=30))
def test_scanner_agrees_with_a_json_parser(text: str) -> None:
    message = gocompat.syntax_error(text)
    if _python_accepts(text):
        assert message is None, (text, message)
    else:
        assert message, text


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        # Go holds JSON numbers in float64: integers beyond 2**53 lose precision, as in Faktory.
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
    )
)
def test_valid_documents_pass_and_cut_ones_say_unexpected_end(value: object) -> None:
    text = json.dumps(value)
    assert gocompat.syntax_error(text) is None
    assert gocompat.loads(text) == value
    if isinstance(value, (list, dict)):
        assert gocompat.syntax_error(text[:-1]) == "unexpected end of JSON input"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid character 'n' looking for beginning of object key string"),
        ("[1,]", "invalid character ']' looking for beginning of value"),
        ("[1 2]", "invalid character '2' after array element"),
        ('{"a":1 "b"}', "invalid character '\"' after object key:value pair"),
        ('"\\q"', "invalid character 'q' in string escape code"),
        ('"\\u12g4"', "invalid character 'g' in \\u hexadecimal character escape"),
        ('"a\x01"', "invalid character '\\x01' in string literal"),
        ("-x", "invalid character 'x' in numeric literal"),
        ("1.x", "invalid character 'x' after decimal point in numeric literal"),
        ("1ex", "invalid character 'x' in exponent of numeric literal"),
        ("tru", "unexpected end of JSON input"),
        ("trux", "invalid character 'x' in literal true (expecting 'e')"),
        ("nul1", "invalid character '1' in literal null (expecting 'l')"),
        ("'x'", "invalid character '\\'' looking for beginning of value"),
        ("[" * 10001, "exceeded max depth"),
    ],
)
def test_go_scanner_messages(text: str, message: str) -> None:
    assert gocompat.syntax_error(text) == message


def test_deep_nesting_never_recurses() -> None:
    with pytest.raises(gocompat.GoJSONError):
        gocompat.loads("[" * 100_000)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2020-01-01", 'cannot parse "" as "T"'),
        ("2020-1-01T00:00:00Z", 'cannot parse "1-01T00:00:00Z" as "01"'),
        ("2020-01-01T25:00:00Z", "hour out of range"),
        ("2020-02-30T00:00:00Z", "day out of range"),
        ("2020-01-01T00:00:00Zjunk", 'extra text: "junk"'),
        ("2020-01-01T00:00:00+0100", 'cannot parse "+0100" as "Z07:00"'),
    ],
)
def test_time_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        gocompat.parse_rfc3339(value)
    assert str(info.value).endswith(message)
    assert str(info.value).startswith(f'parsing time "{value}"')


def test_time_values() -> None:
    parsed = gocompat.parse_rfc3339("2030-01-31T12:00:00.123456789+02:00")
    assert parsed.isoformat() == "2030-01-31T12:00:00.123456+02:00"
    assert gocompat.parse_rfc3339("2030-01-31T12:00:00Z").tzinfo is not None
    assert gocompat.loads("[12345678901234567890, 1.0, 1e21]") == [12345678901234567000, 1, 1e21]


@pytest.mark.parametrize(
    ("text", "limit", "kept"),
    [
        ("  plain  ", 100, "plain"),
        ("\x1c sep \x1f", 100, "\x1c sep \x1f"),  # not white space to Go
        ("\u2003wide\u2028", 100, "wide"),
        ("a" * 150, 100, "a" * 100),
        ("é" * 60, 100, "é" * 50),
        # A character cut in two: each byte left of it becomes one U+FFFD, as Go's JSON
        # encoder writes invalid UTF-8.
        ("a" + "€" * 40, 100, "a" + "€" * 33),
        ("ab" + "€" * 40, 100, "ab" + "€" * 32 + "\ufffd\ufffd"),
        ("abc" + "€" * 40, 100, "abc" + "€" * 32 + "\ufffd"),
        ("", 100, ""),
    ],
)
def test_trim_and_cut_is_trimspace_then_a_byte_slice(text: str, limit: int, kept: str) -> None:
    assert gocompat.trim_and_cut(text, limit) == kept


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2030-01-31T12:00:00,5Z", "2030-01-31T12:00:00.500000+00:00"),  # Go takes a comma
        ("2030-01-31T1:02:03Z", "2030-01-31T01:02:03+00:00"),  # and a one-digit hour
        ("0000-01-01T00:00:00Z", "0001-01-01T00:00:00+00:00"),  # year 0: long past
    ],
)
def test_time_values_go_takes_beyond_rfc3339(value: str, expected: str) -> None:
    assert gocompat.parse_rfc3339(value).isoformat() == expected
