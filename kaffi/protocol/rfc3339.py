"""RFC 3339 timestamps as Faktory reads and writes them: one parser and one formatter.

:func:`parse_rfc3339` reads a timestamp as Go's ``time.Parse(time.RFC3339Nano, ...)`` does
(so as Faktory does), strict by default for the jobs kaffi creates, or with ``go=True``
tolerant of what Go tolerates, for the server; what it refuses raises
:class:`RFC3339Error`, which says where it went wrong so that the server can word it as
Go does (:mod:`kaffi.server.gocompat`). :func:`format_rfc3339` writes UTC with
microseconds and ``Z``. Both are re-exported by :mod:`kaffi.protocol.models`.

This module does no I/O and imports nothing from kaffi.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

__all__ = ["RFC3339Error", "format_rfc3339", "parse_optional_rfc3339", "parse_rfc3339"]


class RFC3339Error(ValueError):
    """A timestamp :func:`parse_rfc3339` refuses, with where it went wrong, so that the
    server can word it as Go's ``time.Parse`` does (``kaffi.server.gocompat``).

    ``kind`` is ``"syntax"`` (``rest`` could not be read as the layout element
    ``layout``), ``"range"`` (the field ``what`` is out of range) or ``"extra"`` (``rest``
    follows a whole timestamp).
    """

    def __init__(self, text: str, kind: str, rest: str = "", layout: str = "", what: str = ""):
        self.text, self.kind, self.rest, self.layout, self.what = text, kind, rest, layout, what
        example = "(like 2030-01-31T12:00:00Z)"
        detail = f": {what} out of range" if kind == "range" else f" {example}"
        super().__init__(f"{text!r} is not an RFC 3339 timestamp{detail}")


def _two_digits(text: str, fixed: bool) -> tuple[int, str] | None:
    # Go's getnum: two ASCII digits, or one when the layout element is not zero-padded.
    if not text[:1].isascii() or not text[:1].isdigit():
        return None
    if not text[1:2].isascii() or not text[1:2].isdigit():
        return None if fixed else (int(text[0]), text[1:])
    return int(text[:2]), text[2:]


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_rfc3339(text: str, *, go: bool = False) -> datetime:
    """Parse an RFC 3339 timestamp as Go's ``time.Parse(time.RFC3339Nano, ...)`` does (so
    as Faktory does), keeping microseconds; raise :class:`RFC3339Error` otherwise.

    Go refuses the lowercase 't' and 'z' that RFC 3339 allows, and so do we. With
    ``go=True`` it also takes what Go tolerates beyond RFC 3339 (a one-digit hour, a comma
    before the fraction, a signed or zero year, as the year 1); by default, as for a job
    we create, those are refused too.
    """
    rest = text
    year_text = rest[:4]
    digits = year_text.lstrip("+-") if go else year_text
    if len(year_text) < 4 or not (digits.isascii() and digits.isdigit()):
        raise RFC3339Error(text, "syntax", rest, "2006")
    year = int(year_text)
    rest = rest[4:]
    fields: list[int] = []
    for sep, layout, fixed, name, top in (
        ("-", "01", True, "month", 12),
        ("-", "02", True, "", 0),
        ("T", "15", not go, "hour", 23),
        (":", "04", True, "minute", 59),
        (":", "05", True, "second", 59),
    ):
        if not rest.startswith(sep):
            raise RFC3339Error(text, "syntax", rest, sep)
        rest = rest[1:]
        got = _two_digits(rest, fixed)
        if got is None:
            raise RFC3339Error(text, "syntax", rest, layout)
        number, rest = got
        if name == "month" and not 1 <= number <= 12:
            raise RFC3339Error(text, "range", what="month")
        if name and name != "month" and number > top:
            raise RFC3339Error(text, "range", what=name)
        fields.append(number)
    month, day, hour, minute, second = fields
    micros = 0
    if rest[:1] in ((".", ",") if go else (".",)) and rest[1:2].isascii() and rest[1:2].isdigit():
        end = 1
        while rest[end : end + 1].isascii() and rest[end : end + 1].isdigit():
            end += 1
        # Any number of fraction digits, as Go takes them; a datetime keeps six.
        micros = int(rest[1:end][:6].ljust(6, "0"))
        rest = rest[end:]
    if rest.startswith("Z"):
        tz = timezone.utc
        rest = rest[1:]
    else:
        hh = _two_digits(rest[1:3], True)
        mm = _two_digits(rest[4:6], True)
        if len(rest) < 6 or rest[0] not in "+-" or rest[3] != ":" or hh is None or mm is None:
            raise RFC3339Error(text, "syntax", rest, "Z07:00")
        if hh[0] > 24:
            raise RFC3339Error(text, "range", what="time zone offset hour")
        if mm[0] > 60:
            raise RFC3339Error(text, "range", what="time zone offset minute")
        delta = timedelta(hours=hh[0], minutes=mm[0])
        # Python refuses offsets of 24 h or more (ValueError); Go would take up to 24:60.
        tz = timezone(delta if rest[0] == "+" else -delta)
        rest = rest[6:]
    if rest:
        raise RFC3339Error(text, "extra", rest)
    if day < 1 or day > _days_in(month, year):
        raise RFC3339Error(text, "range", what="day")
    if year < 1:
        if not go:
            raise RFC3339Error(text, "range", what="year")
        # Python's datetime cannot hold year 0 or before; such a time is long past.
        return datetime(1, 1, 1, tzinfo=timezone.utc)
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=tz)


def parse_optional_rfc3339(value: object, *, go: bool = False) -> object:
    """A wire time field before a model checks it: ``""`` is None (Go writes an unset
    time that way, and Faktory reads it as no time), a string is parsed as
    :func:`parse_rfc3339` does, anything else is left to the model."""
    if value == "":
        return None
    if isinstance(value, str):
        return parse_rfc3339(value, go=go)
    return value


def format_rfc3339(value: datetime) -> str:
    """UTC RFC 3339 with microseconds and ``Z``. A naive datetime is taken as local time,
    the Python convention (``datetime.now()`` means now)."""
    if value.tzinfo is None:
        value = value.astimezone()
    value = value.astimezone(timezone.utc)
    # Not strftime: glibc's %Y does not zero-pad years before 1000.
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )
