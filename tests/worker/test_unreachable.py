"""A server the worker cannot reach: fatal at start-up, ridden out (and logged once) later."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import kaffi
from kaffi.app import App
from kaffi.cli import main
from kaffi.client.aio import AsyncConnection
from kaffi.errors import ConnectError
from kaffi.worker import Worker, connections
from tests.support import WAIT, embedded_server, free_port, running, start, wait_until

from .conftest import kaffi_worker

PASSWORD = "s3cret-pw"
#: The test app's connect timeout (see APP_SOURCE): the attempts to reach nobody end sooner.
SHORT_CONNECT_TIMEOUT = {"KAFFI_TEST_CONNECT_TIMEOUT": "1"}


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("kaffi: error:")]


def check_one_clear_error(text: str, port: int) -> None:
    (line,) = error_lines(text)
    assert line.startswith(
        f"kaffi: error: cannot reach the Faktory server at tcp://127.0.0.1:{port}: "
    )
    assert PASSWORD not in text
    assert "Traceback" not in text


# -- start-up -------------------------------------------------------------------------------


def test_run_raises_connect_error_when_the_server_cannot_be_reached() -> None:
    port = free_port()
    worker = App(url=f"tcp://:{PASSWORD}@127.0.0.1:{port}", connect_timeout=1.0).worker()
    began = time.monotonic()
    thread, errors = start(worker)
    thread.join(WAIT)
    assert not thread.is_alive(), "the worker kept retrying an unreachable server"
    # The connect timeout (1 s) bounds the attempts; the rest is a loaded machine's slack.
    assert time.monotonic() - began < WAIT / 2
    (error,) = errors
    assert isinstance(error, ConnectError)
    assert str(error).startswith(f"cannot reach the Faktory server at tcp://127.0.0.1:{port}: ")
    assert "attempts in 1s" in str(error)
    assert PASSWORD not in str(error)
    assert not worker.ready.is_set(), "no slot may start without a server"
    assert worker.state == "stopped"


def test_a_server_that_comes_up_within_the_connect_timeout_is_used(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    app = App(url=f"tcp://127.0.0.1:{port}", connect_timeout=WAIT)
    worker = app.worker(concurrency=2)
    caplog.set_level(logging.INFO, logger="kaffi.worker")
    thread, errors = start(worker)
    try:
        wait_until(
            lambda: any(
                f"cannot reach the Faktory server at tcp://127.0.0.1:{port} yet" in r.getMessage()
                for r in caplog.records
            ),
            "the first failed attempt",
        )
        assert not worker.ready.is_set()
        with embedded_server(bind=f"127.0.0.1:{port}") as server:
            assert worker.ready.wait(WAIT), "the worker did not start once the server was up"
            wait_until(lambda: len(server.workers()) == 1, "the worker's HELLO")
            worker.stop(timeout=WAIT)
            thread.join(WAIT)
    finally:
        worker.stop(timeout=WAIT)
        thread.join(WAIT)
        app.close()
    assert not thread.is_alive()
    assert errors == []


def test_a_stop_while_waiting_for_the_server_ends_run_without_an_error() -> None:
    port = free_port()
    worker = Worker(App(url=f"tcp://127.0.0.1:{port}", connect_timeout=WAIT * 2))
    attempts: list[float] = []
    original = worker.connector.connect

    async def counting_connect() -> AsyncConnection:
        attempts.append(time.monotonic())
        return await original()

    worker.connector.connect = counting_connect  # type: ignore[method-assign]
    thread, errors = start(worker)
    wait_until(lambda: len(attempts) >= 2, "a retried first connection")
    worker.stop(timeout=WAIT)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert worker.state == "stopped"


@pytest.mark.usefixtures("fresh_tasks_module")
def test_the_command_prints_one_line_and_exits_1_with_clirunner(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    port = free_port()
    # The app's own URL and connect timeout (--url would bring the default 5 s).
    monkeypatch.setenv("FAKTORY_URL", f"tcp://:{PASSWORD}@127.0.0.1:{port}")
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    for name, value in SHORT_CONNECT_TIMEOUT.items():
        monkeypatch.setenv(name, value)
    # The command logs to the root logger, and so does asyncio when it collects an earlier
    # test's task whose exception nobody read: collect now, so the output is the command's.
    gc.collect()
    began = time.monotonic()
    result = CliRunner().invoke(main, ["worker", "tasks_app:app"])
    assert time.monotonic() - began < WAIT
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    check_one_clear_error(result.output, port)


def test_the_command_prints_one_line_and_exits_1_as_a_subprocess(project: Path) -> None:
    port = free_port()
    began = time.monotonic()
    url = f"tcp://:{PASSWORD}@127.0.0.1:{port}"
    with kaffi_worker(project, url, "tasks_app:app", env=SHORT_CONNECT_TIMEOUT) as (proc, logs):
        assert proc.wait(WAIT) == 1, logs.text()
    assert time.monotonic() - began < WAIT
    check_one_clear_error(logs.text(), port)


def test_the_supervisor_gives_up_instead_of_restarting_children(project: Path) -> None:
    port = free_port()
    began = time.monotonic()
    with kaffi_worker(
        project,
        f"tcp://:{PASSWORD}@127.0.0.1:{port}",
        "tasks_app:app",
        "--processes",
        "2",
        env=SHORT_CONNECT_TIMEOUT,
    ) as (proc, logs):
        assert proc.wait(WAIT) == 1, logs.text()
    assert time.monotonic() - began < WAIT
    text = logs.text()
    check_one_clear_error(text, port)
    # Two children started, none restarted.
    assert text.count("started worker process") == 2, text
    assert "restarting in" not in text, text
    assert "cannot start: cannot reach the Faktory server" in text, text
    assert "all worker processes have exited" in text, text


# -- a server lost while running ------------------------------------------------------------


def test_the_outage_reminder_and_the_recovery_are_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    outage = connections.Outage("w1", "tcp://127.0.0.1:7419", clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="kaffi.worker")

    def lines(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == level]

    error = ConnectError("refused")
    for _ in range(3 * 21):  # 20 slots and the heartbeat, three rounds each
        outage.connect_failed(error, now[0])
        now[0] += 0.1
    assert len(lines(logging.WARNING)) == 1
    assert "cannot reach the Faktory server at tcp://127.0.0.1:7419" in lines(logging.WARNING)[0]
    now[0] = 100.0 + connections.OUTAGE_REMINDER_SECONDS + 1
    outage.connect_failed(error, now[0])
    outage.connect_failed(error, now[0])
    assert len(lines(logging.WARNING)) == 2
    assert "still unreachable after 31s (64 failed connects)" in lines(logging.WARNING)[1]
    attempt_before_recovery = now[0]
    now[0] += 1
    outage.connected()
    outage.connected()
    (back,) = [m for m in lines(logging.INFO) if "is back" in m]
    assert "is back after 32.0s" in back
    # A connect begun before the recovery and failing after it belongs to the old outage.
    outage.connect_failed(error, attempt_before_recovery)
    assert outage.down_since is None
    outage.connect_failed(error, now[0])
    assert len(lines(logging.WARNING)) == 3
    assert outage.down_since == now[0]


def test_a_lost_server_is_logged_once_and_the_worker_resumes_when_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    concurrency = 4
    server = embedded_server().start()
    port = server.port
    url = server.url
    app = App(url=url)
    done: list[int] = []

    @app.task
    def note(n: int) -> None:
        done.append(n)

    worker = Worker(app, concurrency=concurrency, beat_interval=0.5)
    connects: list[float] = []
    original = worker.connector.connect

    async def counting_connect() -> AsyncConnection:
        connects.append(time.monotonic())
        return await original()

    worker.connector.connect = counting_connect  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="kaffi.worker")

    def messages(level: int) -> list[str]:
        return [
            r.getMessage()
            for r in list(caplog.records)
            if r.name == "kaffi.worker" and r.levelno == level
        ]

    try:
        with running(worker):
            note.delay(1)
            wait_until(lambda: done == [1], "the first job")
            before = len(connects)
            server.stop()
            # The outage, measured in connect attempts rather than time: every slot and
            # the heartbeat retries several times (backoff 0.05, 0.1, 0.2 ... s).
            wait_until(
                lambda: len(connects) >= before + 4 * (concurrency + 1),
                "the worker to retry its connections a few times",
            )
            warnings = messages(logging.WARNING)
            assert len(warnings) == 1, warnings
            assert f"cannot reach the Faktory server at tcp://127.0.0.1:{port}" in warnings[0]
            assert worker.state == "running"
            server = embedded_server(bind=f"127.0.0.1:{port}").start()
            wait_until(
                lambda: any("is back" in m for m in messages(logging.INFO)),
                "the worker to say the server is back",
            )
            with kaffi.Client(url) as client:
                client.push({"jobtype": "note", "args": [2]})
            wait_until(lambda: done == [1, 2], "a job after the server came back")
            # The heartbeat registers the wid again with the new server.
            wait_until(lambda: len(server.workers()) == 1, "the worker's wid on the new server")
        # Nothing more was warned about: not per slot, not per attempt, not per beat.
        assert messages(logging.WARNING) == warnings
        (back,) = [m for m in messages(logging.INFO) if "is back" in m]
        assert f"the Faktory server at tcp://127.0.0.1:{port} is back" in back
    finally:
        server.stop()
        app.close()


def test_a_wrong_password_with_processes_exits_1_with_one_line(project: Path) -> None:
    with embedded_server(password="right") as server:
        url = f"tcp://:{PASSWORD}@127.0.0.1:{server.port}"
        with kaffi_worker(project, url, "tasks_app:app", "--processes", "2") as (proc, logs):
            assert proc.wait(WAIT) == 1, logs.text()
    text = logs.text()
    (line,) = error_lines(text)
    assert line.startswith("kaffi: error: authentication failed"), line
    assert PASSWORD not in text
    assert "Traceback" not in text
    assert "restarting in" not in text, text
