"""Beat, the scheduler loop, against the embedded server, with a clock the tests move.

The controlled clock is years ahead of the server's, so everything Beat pushes waits in
the server's scheduled set, where the tests count it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from kaffi import App, Client, current_job
from kaffi.errors import ConfigurationError
from kaffi.periodic import Beat
from kaffi.periodic.schedule import CUSTOM_KEY

START = datetime(2031, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeClock:
    """``clock()`` returns ``now``; tests move it."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def app(faktory_server: Any) -> Iterator[App]:
    app = App(faktory_server.url)

    @app.task
    def tick(n: int) -> None:
        """Counts nothing: these tests look at the server's sets."""

    yield app
    app.close()


def scheduled(client: Client) -> int:
    return int(client.info().faktory.sets.get("scheduled", 0))


def beat(app: App, clock: FakeClock, **kw: Any) -> Beat:
    kw.setdefault("lookahead", timedelta(seconds=60))
    kw.setdefault("margin", timedelta(seconds=5))
    return Beat(app, clock=clock, **kw)


def test_two_schedulers_leave_one_job_per_occurrence(app: App, kaffi_client: Client) -> None:
    app.periodic("tick", every=timedelta(seconds=10), args=(1,))
    clock = FakeClock()
    first, second = beat(app, clock), beat(app, clock)
    # 12:00:10 .. 12:01:00: six occurrences inside the 60 s look-ahead.
    assert first.tick() == 6
    assert second.tick() == 6
    assert scheduled(kaffi_client) == 6
    # Later ticks push only what entered the window since.
    clock.advance(25)
    assert first.tick() == 2
    assert first.tick() == 0
    clock.advance(1)
    assert second.tick() == 2
    assert scheduled(kaffi_client) == 8
    assert (first.stats.pushed, second.stats.pushed) == (8, 8)
    assert first.stats.skipped == second.stats.skipped == 0


def test_a_schedule_changed_during_a_deploy_gets_its_own_jobs(
    app: App, kaffi_client: Client
) -> None:
    old = App(app.url)
    new = App(app.url)
    for version, arg in ((old, 1), (new, 2)):

        @version.task
        def tick(n: int) -> None:
            """The same task in two versions of an app."""

        version.periodic(tick, every=timedelta(seconds=30), args=(arg,))
    clock = FakeClock()
    assert beat(old, clock).tick() == 2
    assert beat(new, clock).tick() == 2
    # Different arguments, different jids: the server keeps both versions' jobs.
    assert scheduled(kaffi_client) == 4
    old.close()
    new.close()


def test_occurrences_missed_by_a_stalled_scheduler_are_skipped_and_counted(
    app: App, kaffi_client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic("tick", every=timedelta(seconds=2), args=(1,))
    clock = FakeClock()
    runner = beat(app, clock, lookahead=timedelta(seconds=10), margin=timedelta(seconds=3))
    # At start, 12:00:02 is closer than the margin: skipped, never pushed late (an
    # expected skip at start is logged at INFO, a later one as a warning).
    with caplog.at_level(logging.INFO, logger="kaffi.beat"):
        assert runner.tick() == 4  # 12:00:04 .. 12:00:10
    assert runner.stats.skipped == 1
    assert [r.levelno for r in caplog.records if "skipped" in r.getMessage()] == [logging.INFO]
    caplog.clear()
    clock.advance(30)  # a stall: 12:00:12 .. 12:00:32 went by unpushed
    with caplog.at_level(logging.WARNING, logger="kaffi.beat"):
        assert runner.tick() == 4  # 12:00:34 .. 12:00:40
    assert runner.stats.skipped == 1 + 11  # and 12:00:12 .. 12:00:32
    assert scheduled(kaffi_client) == 8
    assert "skipped the occurrence at 2031-01-01T12:00:12Z (past)" in caplog.text
    assert "(closer than the margin)" in caplog.text


def test_catch_up_pushes_missed_occurrences_once(app: App, kaffi_client: Client) -> None:
    app.periodic("tick", every=timedelta(seconds=2), args=(1,), catch_up=True)
    clock = FakeClock()
    runner = beat(app, clock, lookahead=timedelta(seconds=10), margin=timedelta(seconds=3))
    assert runner.tick() == 5  # 12:00:02 (late: inside the margin) .. 12:00:10
    clock.advance(30)
    assert runner.tick() == 15  # 12:00:12 .. 12:00:32 late, 12:00:34 .. 12:00:40
    assert runner.tick() == 0
    assert runner.stats.skipped == 0
    assert runner.stats.late == 1 + 11
    assert runner.stats.pushed == 4 + 4
    assert scheduled(kaffi_client) == 20


def test_a_failed_push_is_tried_again_and_never_pushed_late(app: App) -> None:
    app.periodic("tick", every=timedelta(seconds=10), args=(1,))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    unreachable = Client(f"tcp://127.0.0.1:{dead_port}", connect_timeout=1.0)
    clock = FakeClock()
    runner = beat(app, clock, lookahead=timedelta(seconds=20), client=unreachable)
    assert runner.tick() == 0
    assert runner.stats.failed_pushes == 1  # it stops at the first failure of a schedule
    clock.advance(8)  # 12:00:10 is now 2 s away, closer than the margin
    assert runner.tick() == 0
    assert runner.stats.failed_pushes == 2
    assert runner.stats.skipped == 1
    unreachable.close()


class ExplodingClient:
    """A client whose push fails with a bug, not a kaffi error."""

    def __init__(self) -> None:
        self.calls = 0

    def push(self, payload: dict[str, Any]) -> str:
        self.calls += 1
        raise RuntimeError("a bug in a client")


def test_a_failing_tick_is_logged_and_the_loop_goes_on(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.periodic("tick", every=timedelta(seconds=1), args=(1,))
    client = ExplodingClient()
    runner = Beat(
        app,
        lookahead=timedelta(seconds=6),
        margin=timedelta(seconds=1),
        client=client,  # type: ignore[arg-type]
    )
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    with caplog.at_level(logging.ERROR, logger="kaffi.beat"):
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while client.calls < 2 and time.monotonic() < deadline:
                stop.wait(0.05)
        finally:
            stop.set()
            thread.join(timeout=10)
    assert client.calls >= 2
    assert "beat: a tick failed; trying again at the next one" in caplog.text
    assert not thread.is_alive()


def test_window_options_are_checked() -> None:
    app = App("tcp://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="must be at least 2 s longer than the margin"):
        Beat(app, lookahead=timedelta(seconds=6), margin=timedelta(seconds=5))
    with pytest.raises(ConfigurationError, match="margin must not be negative"):
        Beat(app, margin=timedelta(seconds=-1))


def test_a_worker_runs_periodic_jobs_and_current_job_names_the_occurrence(
    faktory_server: Any,
) -> None:
    app = App(faktory_server.url)
    ran: list[dict[str, Any]] = []
    done = threading.Event()

    @app.task
    def tick(n: int) -> None:
        custom = current_job().custom or {}
        ran.append({"n": n, "jid": current_job().jid, **custom[CUSTOM_KEY]})
        done.set()

    schedule = app.periodic(tick, every=timedelta(seconds=1), args=(7,))
    runner = Beat(app, lookahead=timedelta(seconds=3), margin=timedelta(seconds=1))
    stop = threading.Event()
    scheduler = threading.Thread(target=runner.run, args=(stop,))
    worker = app.worker(concurrency=2)
    working = threading.Thread(target=worker.work)
    scheduler.start()
    working.start()
    try:
        assert done.wait(timeout=20), "no periodic job ran within 20 s"
    finally:
        stop.set()
        worker.stop(timeout=10)
        scheduler.join(timeout=10)
        working.join(timeout=10)
        app.close()
    first = ran[0]
    occurrence = datetime.fromisoformat(first["occurrence"].replace("Z", "+00:00"))
    assert first["schedule"] == "tick"
    assert first["n"] == 7
    assert first["jid"] == schedule.jid(occurrence)
    # It ran when due, not before (the server moved it out of the scheduled set).
    assert time.time() >= occurrence.timestamp()
