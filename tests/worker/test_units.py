"""Worker pieces that need no server: backtraces, options, RSS, backoff."""

from __future__ import annotations

import random
import traceback

import pytest

from kaffi._procinfo import rss_kb
from kaffi.app import App
from kaffi.errors import ServerError, ValidationError
from kaffi.protocol.commands import encode_ack, encode_line
from kaffi.protocol.models import dumps
from kaffi.protocol.resp import BulkReply, ErrorReply
from kaffi.worker import Worker
from kaffi.worker.backoff import (
    BACKOFF_CAP,
    BACKOFF_FIRST,
    IDLE_FETCH_SPREAD,
    Backoff,
    full_jitter,
    idle_fetch_delay,
)
from kaffi.worker.worker import format_backtrace


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
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 2.0}, "concurrency"),
        ({"pool_size": "30"}, "pool_size"),
        ({"pool_size": True}, "pool_size"),
        ({"timeout": "8"}, "timeout"),
        ({"beat_interval": None}, "beat_interval"),
        ({"max_jobs": 2.5}, "max_jobs"),
        ({"max_memory_mb": -1.0}, "max_memory_mb"),
        ({"labels": "one-label"}, "labels"),
        ({"labels": ["ok", 3]}, "labels"),
        ({"wid": 12}, "wid"),
        ({"hostname": b"host"}, "hostname"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Worker(App(), **options)  # type: ignore[arg-type]
    assert info.value.field == field
    message = str(info.value)
    assert "\n" not in message
    if field != "queues":  # the queue parser words its own errors
        assert message.startswith(f"{field} must ")
        assert message.endswith(f"got {options[field]!r}")


def test_the_option_messages_stay_what_they_were() -> None:
    with pytest.raises(ValidationError) as info:
        Worker(App(), concurrency=0)
    assert str(info.value) == "concurrency must be a whole number of at least 1, got 0"
    with pytest.raises(ValidationError) as info:
        Worker(App(), concurrency=4, pool_size=4)
    assert str(info.value) == (
        "pool_size must be a whole number of at least concurrency + 1 (5: a connection per job"
        " slot and one for the heartbeat), got 4"
    )
    with pytest.raises(ValidationError) as info:
        Worker(App(), beat_interval=61)
    assert str(info.value) == (
        "beat_interval must be more than 0 and at most 60 seconds (Faktory forgets a worker"
        " silent for 60 s), got 61"
    )


def test_good_options_are_kept_with_their_types() -> None:
    worker = Worker(
        App(), concurrency=3, timeout=2, beat_interval=0.5, labels=["a", "b"], max_jobs=7
    )
    assert (worker.concurrency, worker.pool_size, worker.max_jobs) == (3, 5, 7)
    assert worker.timeout == 2.0
    assert isinstance(worker.timeout, float)
    assert worker.beat_interval == 0.5
    assert worker.labels == ("a", "b")
    assert Worker(App(), wid="").wid != ""  # empty: a random one, as before


def test_defaults_follow_the_seed() -> None:
    worker = Worker(App())
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
    processor = Worker(App()).processor
    line = processor.decode_job(BulkReply(b'{"jid":"jid-12345678","jobtype":"","args":[]}'))
    assert isinstance(line, bytes)
    assert line.startswith(b'FAIL {"jid":"jid-12345678","errtype":"InvalidJob"')
    assert b"jobtype" in line
    assert processor.decode_job(BulkReply(b"not json")) is None
    assert processor.decode_job(BulkReply(None)) is None
    with pytest.raises(ServerError, match="nope"):
        processor.decode_job(ErrorReply("ERR", "nope"))


def test_backoff_is_full_jitter_under_a_doubling_ceiling() -> None:
    backoff = Backoff(BACKOFF_FIRST, BACKOFF_CAP, rng=random.Random(1234))
    twin = random.Random(1234)
    delays = [backoff.next() for _ in range(20)]
    # Exactly uniform(0, min(cap, base * 2**attempt)), drawn from the given generator.
    expected = [twin.uniform(0.0, min(BACKOFF_CAP, BACKOFF_FIRST * 2**n)) for n in range(20)]
    assert delays == expected
    assert all(0.0 <= d <= min(BACKOFF_CAP, BACKOFF_FIRST * 2**n) for n, d in enumerate(delays))
    assert backoff.ceiling() == BACKOFF_CAP
    assert max(delays) > BACKOFF_FIRST * 4, "the ceiling never grew"
    assert len(set(delays)) == len(delays), "no jitter"
    backoff.reset()
    assert backoff.ceiling() == BACKOFF_FIRST
    assert backoff.next() <= BACKOFF_FIRST


def test_full_jitter_survives_huge_attempt_numbers() -> None:
    rng = random.Random(5)
    assert 0.0 <= full_jitter(10_000, 0.05, 5.0, rng) <= 5.0
    assert full_jitter(-3, 0.05, 5.0, rng) <= 0.05


def test_the_idle_fetch_pause_is_spread_but_bounded() -> None:
    rng = random.Random(99)
    delays = [idle_fetch_delay(rng=rng) for _ in range(200)]
    assert all(0.0 <= d <= IDLE_FETCH_SPREAD for d in delays)
    # Spread over the range, not one value: slots started together do not fetch together.
    assert max(delays) - min(delays) > IDLE_FETCH_SPREAD / 2
    assert idle_fetch_delay(0.0, rng) == 0.0


@pytest.mark.parametrize(
    "jid", ["9f2c1e7a6b5d4c3e2f1a0b9c", "a-b_c.d:e", "with space", 'q"uote', "ünïcode", "x\\y", ""]
)
def test_encode_ack_sends_what_the_json_encoder_would(jid: str) -> None:
    assert encode_ack(jid) == encode_line("ACK", dumps({"jid": jid}))
