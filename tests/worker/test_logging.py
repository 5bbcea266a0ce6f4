"""Per-job log context and the text/JSON formats."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from kaffi.errors import ConfigurationError
from kaffi.worker.logging import (
    JsonFormatter,
    TextFormatter,
    configure_logging,
    install_record_factory,
    job_context,
    log_job_done,
)


@pytest.fixture
def captured() -> Iterator[list[logging.LogRecord]]:
    install_record_factory()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_records_inside_a_job_carry_jid_and_jobtype(captured: list[logging.LogRecord]) -> None:
    logger = logging.getLogger("user.code")
    logger.info("outside")
    token = job_context.set(("jid-12345678", "send_email"))
    try:
        logger.info("inside")
    finally:
        job_context.reset(token)
    outside, inside = captured
    assert outside.jid is None  # type: ignore[attr-defined]
    assert (inside.jid, inside.jobtype) == ("jid-12345678", "send_email")  # type: ignore[attr-defined]
    assert "[send_email jid-12345678] inside" in TextFormatter().format(inside)


def test_one_line_per_job_with_duration_and_outcome(captured: list[logging.LogRecord]) -> None:
    log_job_done("jid-1", "add", 0.0123, "ack")
    try:
        raise ValueError("boom")
    except ValueError as exc:
        log_job_done("jid-2", "add", 0.5, "fail", exc)
    ok, failed = captured
    assert ok.levelno == logging.INFO
    assert ok.getMessage() == "done add jid-1 in 0.012s: ack"
    assert ok.outcome == "ack"  # type: ignore[attr-defined]
    assert failed.levelno == logging.WARNING
    assert "ValueError: boom" in failed.getMessage()
    doc = json.loads(JsonFormatter().format(failed))
    assert doc["outcome"] == "fail"
    assert doc["errtype"] == "ValueError"
    assert doc["duration"] == 0.5
    assert "Traceback" in doc["exc"]


def test_json_format_is_one_object_per_line_with_job_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        configure_logging("debug", "json", stream=stream)
        token = job_context.set(("jid-abcdefgh", "resize"))
        try:
            logging.getLogger("app").warning("hello %s", "world")
        finally:
            job_context.reset(token)
    finally:
        for h in list(root.handlers):
            if getattr(h, "_kaffi", False):
                root.removeHandler(h)
        root.setLevel(saved[0])
    (line,) = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["message"] == "hello world"
    assert doc["level"] == "warning"
    assert doc["jid"] == "jid-abcdefgh"
    assert doc["jobtype"] == "resize"


def test_a_job_line_costs_nothing_when_the_level_is_off() -> None:
    logger = logging.getLogger("kaffi.job")
    old = logger.level
    logger.setLevel(logging.ERROR)
    calls: list[logging.LogRecord] = []

    def spy(record: logging.LogRecord) -> bool:
        calls.append(record)
        return True

    logger.addFilter(spy)
    try:
        log_job_done("jid-1", "add", 0.1, "ack")
    finally:
        logger.setLevel(old)
        logger.filters.clear()
    assert calls == []


@pytest.mark.parametrize(("level", "fmt"), [("loud", "text"), ("info", "xml")])
def test_bad_logging_options(level: str, fmt: str) -> None:
    with pytest.raises(ConfigurationError):
        configure_logging(level, fmt, stream=io.StringIO())
