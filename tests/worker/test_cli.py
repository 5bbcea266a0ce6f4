"""``kaffi worker`` on the command line: APP forms, signals, processes, logging."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kaffi.app import App
from kaffi.cli import main

from .conftest import WAIT, kaffi_worker, read_out, stats, wait_until


@pytest.fixture
def fresh_tasks_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CliRunner imports tasks_app into this process: never reuse another test's copy."""
    monkeypatch.delitem(sys.modules, "tasks_app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("tasks_app", None)


def push(app: App, jobtype: str, *args: Any, queue: str = "default", retry: int = 3) -> str:
    return app.client.push({"jobtype": jobtype, "args": list(args), "queue": queue, "retry": retry})


@pytest.mark.usefixtures("fresh_tasks_module")
def test_module_colon_attribute_with_clirunner(
    app: App, project: Path, faktory_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    monkeypatch.setenv("KAFFI_TEST_OUT", str(project / "out.txt"))
    for i in range(3):
        push(app, "record", f"job{i}")
    push(app, "arecord", "async", queue="other")
    result = CliRunner().invoke(
        main,
        [
            "worker",
            "tasks_app:app",
            "--burst",
            "--queues",
            "default,other",
            "--url",
            faktory_server.url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(read_out(project)) == ["async", "job0", "job1", "job2"]
    assert stats(app).sets["working"] == 0


def test_module_alone_as_a_subprocess(app: App, project: Path, faktory_server: Any) -> None:
    push(app, "record", "critical-job", queue="critical")
    push(app, "record", "default-job")
    with kaffi_worker(
        project, faktory_server.url, "tasks_app", "-q", "critical,default", "-c", "1", "--burst"
    ) as (
        proc,
        logs,
    ):
        assert proc.wait(WAIT) == 0, logs.text()
    assert read_out(project) == ["critical-job", "default-job"]


@pytest.mark.usefixtures("fresh_tasks_module")
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["no_such_module_xyz:app"], "cannot import app module"),
        (["tasks_app:nope"], "has no attribute 'nope'"),
        (["tasks_app", "--queues", "bad queue"], "invalid queue name"),
        (["tasks_app", "--url", "http://x"], "scheme must be tcp"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    project: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], needle: str
) -> None:
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["worker", *args])
    assert result.exit_code == 1, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("kaffi: error: ")


def test_sigterm_under_load_leaves_nothing_reserved_and_loses_nothing(
    app: App, project: Path, faktory_server: Any
) -> None:
    total = 600
    app.client.push_bulk(
        [{"jobtype": "slow", "args": [f"j{i}", 0.05], "retry": 3} for i in range(total)]
    )
    with kaffi_worker(project, faktory_server.url, "tasks_app:app", "-c", "20", "-t", "8") as (
        proc,
        logs,
    ):
        wait_until(lambda: len(read_out(project)) >= 40, "jobs to be done")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(8 + 2 + 5) == 0, logs.text()
    done = read_out(project)
    info = stats(app)
    assert info.sets["working"] == 0, "a job stayed reserved"
    assert len(done) == len(set(done)), "a job ran twice"
    back = info.queues.get("default", 0) + info.sets["retries"]
    assert len(done) + back == total, f"done {len(done)} + back {back} != pushed {total}"
    assert len(done) < total, "the worker finished everything before the signal"


def test_second_sigint_skips_the_wait(app: App, project: Path, faktory_server: Any) -> None:
    push(app, "hang")
    with kaffi_worker(project, faktory_server.url, "tasks_app:app", "--timeout", "120") as (
        proc,
        logs,
    ):
        wait_until(lambda: read_out(project) == ["hanging"], "the job to start")
        proc.send_signal(signal.SIGINT)
        logs.wait_for("shutting down")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0, logs.text()
    assert "second SIGINT" in logs.text()
    info = stats(app)
    assert info.sets["working"] == 0
    assert info.sets["retries"] == 1


def test_tstp_quiets_and_ttin_dumps_stacks(app: App, project: Path, faktory_server: Any) -> None:
    with kaffi_worker(project, faktory_server.url, "tasks_app:app", "-c", "2") as (proc, logs):
        logs.wait_for("starting")
        proc.send_signal(signal.SIGTTIN)
        logs.wait_for("stacks of worker")
        wait_until(lambda: "--- task kaffi-heartbeat" in logs.text(), "the task stacks")
        proc.send_signal(signal.SIGTSTP)
        logs.wait_for("quiet (asked to quiet)")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, logs.text()
    assert "MainThread" in logs.text()


def test_json_logs_with_one_line_per_job(app: App, project: Path, faktory_server: Any) -> None:
    jid = push(app, "record", "x")
    with kaffi_worker(
        project, faktory_server.url, "tasks_app:app", "--burst", "--log-format", "json"
    ) as (proc, logs):
        assert proc.wait(WAIT) == 0, logs.text()
    docs = [json.loads(line) for line in logs.lines if line.startswith("{")]
    assert len(docs) == len(logs.lines), logs.text()
    (job_line,) = [d for d in docs if d["logger"] == "kaffi.job"]
    assert job_line["jid"] == jid
    assert job_line["jobtype"] == "record"
    assert job_line["outcome"] == "ack"
    assert isinstance(job_line["duration"], float)


def test_processes_restart_a_killed_child(app: App, project: Path, faktory_server: Any) -> None:
    with kaffi_worker(
        project, faktory_server.url, "tasks_app:app", "--processes", "2", "-c", "2"
    ) as (
        proc,
        logs,
    ):
        started = logs.wait_for("started worker process", 2)
        wait_until(lambda: len(faktory_server.workers()) >= 2, "both children to say HELLO")
        pid = int(started[0].split("(pid ")[1].split(",")[0])
        os.kill(pid, signal.SIGKILL)
        logs.wait_for("died (killed by SIGKILL)")
        logs.wait_for("started worker process 3")
        push(app, "record", "after-restart")
        wait_until(lambda: read_out(project) == ["after-restart"], "a job after the restart")
        wids = {w["wid"] for w in faktory_server.workers()}
        prefixes = {wid.rsplit("-", 1)[0] for wid in wids}
        assert len(prefixes) == 1, wids
        proc.send_signal(signal.SIGTSTP)  # forwarded: both children go quiet
        logs.wait_for("quiet (asked to quiet)", 2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, logs.text()
    assert "all worker processes have exited" in logs.text()


def test_processes_recycle_after_max_jobs_and_lose_nothing(
    app: App, project: Path, faktory_server: Any
) -> None:
    total = 40
    app.client.push_bulk(
        [{"jobtype": "record", "args": [f"j{i}"], "retry": 3} for i in range(total)]
    )
    with kaffi_worker(
        project,
        faktory_server.url,
        "tasks_app:app",
        "--processes",
        "2",
        "-c",
        "3",
        "--max-jobs-per-child",
        "8",
        "--burst",
    ) as (proc, logs):
        assert proc.wait(WAIT) == 0, logs.text()
    done = read_out(project)
    assert sorted(done) == sorted(f"j{i}" for i in range(total))
    assert "recycling" in logs.text()
    info = stats(app)
    assert info.sets["working"] == 0
    assert info.sets["retries"] == 0


def test_processes_recycle_above_max_memory(app: App, project: Path, faktory_server: Any) -> None:
    total = 20
    app.client.push_bulk(
        [{"jobtype": "record", "args": [f"m{i}"], "retry": 3} for i in range(total)]
    )
    with kaffi_worker(
        project,
        faktory_server.url,
        "tasks_app:app",
        "--max-memory-per-child",
        "1",
        "--burst",
    ) as (proc, logs):
        logs.wait_for("above the limit of 1 MB")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, logs.text()
    done = read_out(project)
    info = stats(app)
    assert info.sets["working"] == 0
    assert len(done) == len(set(done))
    assert len(done) + info.queues.get("default", 0) + info.sets["retries"] == total
