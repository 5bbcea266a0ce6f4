"""format_backtrace: the one way a FAIL's backtrace is written (the worker's format)."""

from __future__ import annotations

import traceback

import pytest

from kaffi.protocol.commands import format_backtrace, format_exception_backtrace


def _deep(n: int) -> None:
    if n:
        _deep(n - 1)
    raise ValueError("bottom")


def _raised(depth: int) -> ValueError:
    try:
        _deep(depth)
    except ValueError as exc:
        return exc
    raise AssertionError("not raised")


def test_lines_are_file_line_function_and_source_innermost_first() -> None:
    exc = _raised(2)
    lines = format_exception_backtrace(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    assert len(lines) == len(frames) == 4
    innermost = frames[-1]
    assert lines[0] == (
        f'{innermost.filename}:{innermost.lineno} in _deep: raise ValueError("bottom")'
    )
    assert lines[-1].startswith(f"{__file__}:")
    assert lines[-1].endswith(" in _raised: _deep(depth)")


@pytest.mark.parametrize(("limit", "expected"), [(None, 50), (0, 0), (3, 3), (500, 50)])
def test_the_servers_fifty_lines_and_the_jobs_limit(limit: int | None, expected: int) -> None:
    exc = _raised(60)
    assert len(format_exception_backtrace(exc, limit)) == expected
    frames = traceback.extract_tb(exc.__traceback__)
    assert format_backtrace(frames, limit) == format_exception_backtrace(exc, limit)


def test_a_frame_without_source_has_no_colon_part() -> None:
    frame = traceback.FrameSummary("<generated>", 7, "make", line="")
    assert format_backtrace([frame]) == ["<generated>:7 in make"]


def test_an_exception_never_raised_has_no_backtrace() -> None:
    assert format_exception_backtrace(ValueError("never raised")) == []
