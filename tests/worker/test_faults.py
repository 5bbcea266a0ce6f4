"""The worker when things go wrong: lost connections, a refused password."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from kaffi.app import App
from kaffi.client.aio import AsyncConnection
from kaffi.errors import AuthenticationError, ReadError
from kaffi.worker import Worker, processor
from tests.support import WAIT, embedded_server, running, start, wait_until

from .conftest import stats


def test_an_ack_whose_connection_breaks_is_sent_again(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = AsyncConnection.pipeline
    broken: list[bytes] = []

    async def flaky(self: AsyncConnection, lines: Any, *, timeout: float | None = None) -> Any:
        if not broken and lines[0].startswith(b"ACK"):
            # The worst case: the bytes may have left, the replies never come back.
            broken.append(lines[0])
            self._abort()
            raise ReadError("connection reset by the test")
        return await original(self, lines, timeout=timeout)

    monkeypatch.setattr(AsyncConnection, "pipeline", flaky)

    @app.task
    def noop(i: int) -> None:
        return None

    for i in range(3):
        noop.delay(i)
    with running(app.worker(concurrency=1)) as worker:
        wait_until(lambda: worker.processed == 3, "three jobs")
        wait_until(lambda: stats(app).sets["working"] == 0, "every ACK to arrive")
    assert len(broken) == 1
    info = stats(app)
    assert info.sets["retries"] == 0
    assert info.queues["default"] == 0


def test_a_refused_password_stops_the_worker_with_a_clear_error() -> None:
    with embedded_server(password="right") as server:
        url = f"tcp://:wrong@{server.host}:{server.port}"
        app = App(url=url)
        thread, outcome = start(app.worker(concurrency=2))
        thread.join(WAIT)
        assert not thread.is_alive(), "the worker kept retrying a wrong password"
        assert len(outcome) == 1
        assert isinstance(outcome[0], AuthenticationError)
        assert "password" in str(outcome[0])


def test_quiet_from_python_stops_fetching_but_finishes_held_jobs(app: App) -> None:
    release = threading.Event()
    started = threading.Event()

    @app.task
    def held() -> None:
        started.set()
        release.wait(WAIT)

    held.delay()
    with running(Worker(app, concurrency=2)) as worker:
        assert started.wait(WAIT)
        worker.quiet()
        wait_until(lambda: worker.state == "quiet", "quiet")
        release.set()
        wait_until(lambda: worker.life.live_slots == 0, "the slots to stop")
        assert worker.processed == 1
        held.delay()
        assert stats(app).queues["default"] == 1
        assert stats(app).sets["working"] == 0


def test_a_fail_whose_connection_breaks_is_sent_again(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = AsyncConnection.pipeline
    broken: list[bytes] = []

    async def flaky(self: AsyncConnection, lines: Any, *, timeout: float | None = None) -> Any:
        if not broken and lines[0].startswith(b"FAIL"):
            broken.append(lines[0])
            self._abort()
            raise ReadError("connection reset by the test")
        return await original(self, lines, timeout=timeout)

    monkeypatch.setattr(AsyncConnection, "pipeline", flaky)

    @app.task(retry=2)
    def explode() -> None:
        raise ValueError("kaboom")

    @app.task
    def after() -> None:
        return None

    explode.delay()
    after.delay()
    with running(app.worker(concurrency=1)) as worker:
        wait_until(lambda: worker.processed == 2, "both jobs")
        wait_until(lambda: stats(app).sets["working"] == 0, "the FAIL to arrive")
    assert len(broken) == 1
    assert stats(app).sets["retries"] == 1


def test_a_report_that_cannot_be_sent_is_retried_then_given_up_loudly(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A port nobody listens on: every reconnect fails at once.
    with embedded_server() as server:
        url = server.url
    monkeypatch.setattr(processor, "REPORT_RETRY_SECONDS", 0.6)
    worker = Worker(App(url=url), concurrency=1)
    opens: list[float] = []
    original = worker.connector.open

    async def counting_open() -> AsyncConnection:
        opens.append(time.monotonic())
        return await original()

    monkeypatch.setattr(worker.connector, "open", counting_open)
    slot = processor.Slot(0)
    line = b'ACK {"jid":"jid-12345678"}\r\n'
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="kaffi.worker"):
        asyncio.run(asyncio.wait_for(worker.processor.report(slot, line), WAIT))
    # Retried with full-jitter backoff (random waits below 0.05, 0.1, 0.2 ... s) until the
    # next wait would pass the limit: never sooner than one attempt, never past the limit.
    assert len(opens) >= 2
    # (Plus slack for a late wake-up on a loaded machine: unbounded, it would go on for 30 s.)
    assert opens[-1] - started < 0.6 + 1.0
    assert worker.connector.budget.held == 0, "a failed open kept its permit"
    (record,) = [r for r in caplog.records if "GAVE UP" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert "jid-12345678" in record.getMessage()
    assert slot.conn is None
