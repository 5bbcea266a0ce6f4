"""Worker pieces that need no server: backtraces, options, RSS."""

from __future__ import annotations

import traceback

import pytest

from kaffi.app import App
from kaffi.errors import ServerError, ValidationError
from kaffi.protocol.commands import encode_ack
from kaffi.protocol.resp import BulkReply, ErrorReply
from kaffi.worker import Worker
from kaffi.worker.worker import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    _ack_line,
    format_backtrace,
    next_backoff,
    rss_kb,
)


def _deep(n: int) -> None:
    if n == 0:
        raise ValueError("bottom")
    _deep(n - 1)


def _frames() -> list[traceback.FrameSummary]:
    try:
        _deep(60)
    except ValueError as exc:
        return list(traceback.extract_tb(exc.__traceback__))
    raise AssertionError("not raised")


def test_backtrace_is_innermost_first_and_capped_at_50() -> None:
    lines = format_backtrace(_frames(), None)
    assert len(lines) == 50
    assert "in _deep" in lines[0]
    assert 'raise ValueError("bottom")' in lines[0]
    assert lines[0].startswith(__file__)


@pytest.mark.parametrize(("limit", "expected"), [(0, 0), (3, 3), (500, 50)])
def test_backtrace_follows_the_jobs_field(limit: int, expected: int) -> None:
    assert len(format_backtrace(_frames(), limit)) == expected


def test_rss_is_a_plausible_number_of_kib() -> None:
    assert 1_000 < rss_kb() < 10_000_000


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"timeout": -1}, "timeout"),
        ({"beat_interval": 61}, "beat_interval"),
        ({"beat_interval": 0}, "beat_interval"),
        ({"max_jobs": 0}, "max_jobs"),
        ({"max_memory_mb": 0}, "max_memory_mb"),
        ({"concurrency": 4, "pool_size": 4}, "pool_size"),
        ({"queues": "bad queue"}, "queues"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Worker(App(), **options)  # type: ignore[arg-type]
    assert info.value.field == field


def test_defaults_follow_the_seed() -> None:
    worker = App().worker()
    assert worker.queues.names == ("default",)
    assert worker.concurrency == 20
    assert worker.timeout == 8.0
    assert worker.beat_interval == 15.0
    assert worker.pool_size == 22  # concurrency + 2
    assert App().worker(concurrency=5).pool_size == 7
    assert App().worker(concurrency=5, pool_size=6).pool_size == 6
    assert len(worker.wid) == 16
    assert worker.wid != App().worker().wid
    assert "running" in repr(worker)


def test_use_and_register_act_on_the_app() -> None:
    app = App()

    def mw(ctx: object, nxt: object) -> None:
        return None

    def add(a: int, b: int) -> int:
        return a + b

    worker = app.worker().use(mw).register("add", add)
    assert mw in app.middleware
    assert "add" in app.tasks
    assert isinstance(worker, Worker)


def test_a_job_that_is_not_a_valid_payload_is_failed_by_jid() -> None:
    worker = App().worker()
    line = worker._decode_job(BulkReply(b'{"jid":"jid-12345678","jobtype":"","args":[]}'))
    assert isinstance(line, bytes)
    assert line.startswith(b'FAIL {"jid":"jid-12345678","errtype":"InvalidJob"')
    assert b"jobtype" in line
    assert worker._decode_job(BulkReply(b"not json")) is None
    assert worker._decode_job(BulkReply(None)) is None
    with pytest.raises(ServerError, match="nope"):
        worker._decode_job(ErrorReply("ERR", "nope"))


def test_backoff_doubles_up_to_the_cap_and_stays_there() -> None:
    delays = [BACKOFF_FIRST]
    for _ in range(20):
        delays.append(next_backoff(delays[-1]))
    assert delays[1] == 2 * BACKOFF_FIRST
    assert max(delays) == BACKOFF_CAP
    assert delays[-3:] == [BACKOFF_CAP] * 3
    assert delays == sorted(delays)


@pytest.mark.parametrize(
    "jid", ["9f2c1e7a6b5d4c3e2f1a0b9c", "a-b_c.d:e", "with space", 'q"uote', "ünïcode", "x\\y"]
)
def test_the_ack_template_sends_what_encode_ack_sends(jid: str) -> None:
    assert _ack_line(jid) == encode_ack(jid)
