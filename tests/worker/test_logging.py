"""Per-job log context and the text/JSON formats."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import threading
from collections.abc import Iterator

import pytest

from kaffi.errors import ConfigurationError
from kaffi.worker.joblog import (
    JsonFormatter,
    KaffiStreamHandler,
    TextFormatter,
    _done_record,
    _msecs,
    _sole_kaffi_handler,
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


def test_the_text_line_is_what_the_stdlib_formatter_would_write(
    captured: list[logging.LogRecord],
) -> None:
    logger = logging.getLogger("user.code")
    token = job_context.set(("jid-12345678", "send_email"))
    try:
        logger.info("plain %s", "line")
        try:
            raise KeyError("inner")
        except KeyError:
            logger.exception("with a traceback")
        logger.warning("with a stack", stack_info=True)
    finally:
        job_context.reset(token)
    logger.info("outside")
    ours = TextFormatter()
    stdlib = logging.Formatter("%(asctime)s %(levelname)s %(name)s%(job)s %(message)s")
    for record in captured:
        text = ours.format(record)
        record.exc_text = None  # make the stdlib formatter format the exception afresh
        assert text == stdlib.format(record)
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    line = ours.format(captured[0])
    assert re.fullmatch(stamp + r" INFO user\.code \[send_email jid-12345678\] plain line", line)
    assert ours.format(captured[-1]).endswith(" INFO user.code outside")


def test_fast_job_lines_carry_what_an_ordinary_record_carries(
    captured: list[logging.LogRecord],
) -> None:
    for i in range(3):  # the first is built the ordinary way, the rest from its template
        log_job_done(f"jid-{i}0000000", "add", 0.25 * i, "ack")
    ordinary = logging.getLogger("kaffi.job").makeRecord(
        "kaffi.job", logging.INFO, __file__, 0, "x", (), None
    )
    first, second, third = captured
    assert set(vars(second)) == set(vars(first)) >= set(vars(ordinary))
    assert second.getMessage() == "done add jid-10000000 in 0.250s: ack"
    assert (third.duration, third.outcome) == (0.5, "ack")  # type: ignore[attr-defined]
    assert second.created >= first.created
    assert second.thread == threading.get_ident()
    assert second.process == os.getpid()
    assert second.jid is None  # type: ignore[attr-defined]  # logged outside a job here
    token = job_context.set(("jid-abcdefgh", "add"))
    try:
        log_job_done("jid-abcdefgh", "add", 0.1, "ack")
    finally:
        job_context.reset(token)
    assert (captured[-1].jid, captured[-1].jobtype) == ("jid-abcdefgh", "add")  # type: ignore[attr-defined]
    doc = json.loads(JsonFormatter().format(captured[-1]))
    assert doc["jid"] == "jid-abcdefgh"
    assert doc["duration"] == 0.1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", doc["time"])


def test_a_foreign_record_factory_sees_every_job_line(captured: list[logging.LogRecord]) -> None:
    seen: list[str] = []
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        seen.append(record.getMessage())
        return record

    logging.setLogRecordFactory(factory)
    try:
        for i in range(3):
            log_job_done(f"jid-{i}0000000", "add", 0.0, "ack")
    finally:
        logging.setLogRecordFactory(previous)
    assert len(seen) == 3


def test_job_lines_from_several_threads_name_their_own_thread(
    captured: list[logging.LogRecord],
) -> None:
    barrier = threading.Barrier(3)

    def lane(n: int) -> None:
        barrier.wait(10)
        for i in range(200):
            log_job_done(f"jid-{n}-{i:08d}", "add", 0.0, "ack")

    threads = [threading.Thread(target=lane, args=(n,), name=f"lane-{n}") for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(captured) == 600
    idents = {f"lane-{n}": t.ident for n, t in enumerate(threads)}
    for record in captured:
        lane_name = "lane-" + record.args[1].split("-")[1]  # type: ignore[index,union-attr]
        assert record.threadName == lane_name
        assert record.thread == idents[lane_name]


# -- the job line written without a record ---------------------------------------------


@pytest.fixture
def configured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """The handler configure_logging() makes (text, into a StringIO), moved from the root
    logger to ``kaffi.job`` with propagation off: pytest's own capture handler sits on
    the root logger while a test runs, and would rightly stop the direct path."""
    stream = io.StringIO()
    root = logging.getLogger()
    job_logger = logging.getLogger("kaffi.job")
    saved = (root.level, list(root.handlers), job_logger.level, job_logger.propagate)
    configure_logging("info", "text", stream=stream)
    (handler,) = [h for h in root.handlers if h not in saved[1]]
    root.removeHandler(handler)
    root.setLevel(saved[0])
    job_logger.addHandler(handler)
    job_logger.setLevel(logging.INFO)
    job_logger.propagate = False
    try:
        yield stream, handler
    finally:
        job_logger.removeHandler(handler)
        job_logger.setLevel(saved[2])
        job_logger.propagate = saved[3]


@contextlib.contextmanager
def sole(handler: logging.Handler) -> Iterator[None]:
    """``handler`` alone on ``kaffi.job`` meanwhile: pytest hangs its capture handlers on
    loggers while a test runs, and those would rightly stop the direct path."""
    job_logger = logging.getLogger("kaffi.job")
    saved = job_logger.handlers
    job_logger.handlers = [handler]
    try:
        yield
    finally:
        job_logger.handlers = saved


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()])
@pytest.mark.parametrize("in_job", [True, False])
def test_the_direct_job_line_is_what_the_formatter_makes_of_the_record(
    formatter: logging.Formatter, in_job: bool
) -> None:
    install_record_factory()
    token = job_context.set(("jid-abcdefgh", "resize")) if in_job else None
    try:
        times = [1764340481.0, 1764340481.999, 1764340481.9995, 1764340481.9995, 7.5, 7.0]
        for created, duration in zip(times, [0.0, 12.3456789, 3.0, 0.25, 1e-7, 2.5], strict=True):
            record = _done_record("jid-abcdefgh", "resize", duration, "ack")
            record.created = created
            record.msecs = _msecs(created) + 0.0
            direct = formatter.format_done(  # type: ignore[attr-defined]
                created, "jid-abcdefgh", "resize", duration, "ack"
            )
            assert direct == formatter.format(record)
    finally:
        if token is not None:
            job_context.reset(token)


def test_a_job_line_goes_straight_to_the_configured_stream(
    configured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = configured
    assert isinstance(handler, KaffiStreamHandler)
    token = job_context.set(("jid-abcdefgh", "resize"))
    try:
        with sole(handler):
            assert _sole_kaffi_handler() is handler
            log_job_done("jid-abcdefgh", "resize", 0.0125, "ack")
    finally:
        job_context.reset(token)
    (line,) = stream.getvalue().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(
        stamp
        + r" INFO kaffi\.job \[resize jid-abcdefgh\] done resize jid-abcdefgh in 0\.013s: ack",
        line,
    )


def test_anything_else_that_would_see_the_record_gets_it(
    configured: tuple[io.StringIO, logging.Handler],
) -> None:
    stream, handler = configured
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    class Custom(TextFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return "custom " + record.getMessage()

    job_logger = logging.getLogger("kaffi.job")
    setups = [
        (handler.addFilter, handler.removeFilter, keep),
        (job_logger.addFilter, job_logger.removeFilter, keep),
        (job_logger.addHandler, job_logger.removeHandler, Keep()),
        (logging.getLogger().addHandler, logging.getLogger().removeHandler, Keep()),
    ]
    with sole(handler):
        for add, remove, thing in setups:
            add(thing)  # type: ignore[arg-type]
            job_logger.propagate = True  # the root logger's handlers see the record too
            try:
                assert _sole_kaffi_handler() is None
                log_job_done("jid-12345678", "add", 0.5, "ack")
            finally:
                job_logger.propagate = False
                remove(thing)  # type: ignore[arg-type]
        assert _sole_kaffi_handler() is handler
        log_job_done("jid-12345678", "add", 0.5, "ack")  # straight to the stream
        assert len(seen) == len(setups)
        assert all(r.getMessage() == "done add jid-12345678 in 0.500s: ack" for r in seen)
        assert len(stream.getvalue().splitlines()) == len(setups) + 1
        # A formatter of the user's own formats the record, not kaffi's direct line.
        handler.setFormatter(Custom())
        log_job_done("jid-12345678", "add", 0.5, "ack")
        assert stream.getvalue().splitlines()[-1] == "custom done add jid-12345678 in 0.500s: ack"
        # A handler that does not take INFO gets nothing, by either path.
        handler.setLevel(logging.WARNING)
        log_job_done("jid-12345678", "add", 0.5, "ack")
        assert len(stream.getvalue().splitlines()) == len(setups) + 2


def test_a_direct_line_that_cannot_be_written_is_reported_like_any_log_error(
    configured: tuple[io.StringIO, logging.Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream, handler = configured
    reported: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", reported.append)
    stream.close()
    with sole(handler):
        assert _sole_kaffi_handler() is handler
        log_job_done("jid-12345678", "add", 0.5, "ack")
    (record,) = reported
    assert record.getMessage() == "done add jid-12345678 in 0.500s: ack"
