"""``kaffi worker`` on the command line: APP forms, signals, processes, logging."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from random import Random
from typing import Any

import pytest
from click.testing import CliRunner

from kaffi.app import App
from kaffi.cli import main
from kaffi.worker import Worker, supervisor
from kaffi.worker.backoff import Backoff
from kaffi.worker.joblog import JsonFormatter
from tests.support import WAIT, wait_until

from .conftest import kaffi_worker, read_out, stats


def push(app: App, jobtype: str, *args: Any, queue: str = "default", retry: int = 3) -> str:
    return app.client.push({"jobtype": jobtype, "args": list(args), "queue": queue, "retry": retry})


@pytest.mark.usefixtures("fresh_tasks_module")
@pytest.mark.parametrize("spec", ["tasks_app:app", "tasks_app"])
def test_both_app_forms_with_clirunner(
    app: App, project: Path, faktory_server: Any, monkeypatch: pytest.MonkeyPatch, spec: str
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
            spec,
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


@pytest.mark.parametrize("spec", ["tasks_app", "tasks_app:app"])
def test_both_app_forms_as_a_subprocess_with_strict_queues(
    app: App, project: Path, faktory_server: Any, spec: str
) -> None:
    push(app, "record", "default-job")
    push(app, "record", "critical-job", queue="critical")
    with kaffi_worker(
        project, faktory_server.url, spec, "-q", "critical,default", "-c", "1", "--burst"
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


def test_sigterm_then_sigint_skips_the_wait(app: App, project: Path, faktory_server: Any) -> None:
    push(app, "hang")
    with kaffi_worker(project, faktory_server.url, "tasks_app:app", "--timeout", "120") as (
        proc,
        logs,
    ):
        wait_until(lambda: read_out(project) == ["hanging"], "the job to start")
        proc.send_signal(signal.SIGTERM)
        logs.wait_for("shutting down")
        assert "(a second Ctrl-C or SIGTERM skips the wait)" in logs.text()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0, logs.text()
    assert "second SIGINT: not waiting for running jobs" in logs.text()
    info = stats(app)
    assert info.sets["working"] == 0
    assert info.sets["retries"] == 1


def test_tstp_quiets_and_ttin_dumps_stacks(app: App, project: Path, faktory_server: Any) -> None:
    with kaffi_worker(project, faktory_server.url, "tasks_app:app", "-c", "2") as (proc, logs):
        logs.wait_for("starting")
        wait_until(lambda: faktory_server.workers(), "the worker's HELLO")
        # "starting" and even the HELLO come before the worker's tasks exist, so a dump
        # may show none yet: ask again until one shows the heartbeat task.
        for dumps in range(1, 21):
            proc.send_signal(signal.SIGTTIN)
            logs.wait_for("stacks of worker", dumps)
            if "--- task kaffi-heartbeat" in logs.text():
                break
        assert "--- task kaffi-heartbeat" in logs.text(), logs.text()
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
        project,
        faktory_server.url,
        "tasks_app:app",
        "--processes",
        "2",
        "-c",
        "2",
        "--wid",
        "pfx",
        "--labels",
        "blue,green",
    ) as (
        proc,
        logs,
    ):
        started = logs.wait_for("started worker process", 2)
        wait_until(lambda: len(faktory_server.workers()) >= 2, "both children to say HELLO")
        pid = _child_pids(started)[0][0]
        os.kill(pid, signal.SIGKILL)
        logs.wait_for("died (killed by SIGKILL)")
        logs.wait_for("started worker process 3")
        push(app, "record", "after-restart")
        wait_until(lambda: read_out(project) == ["after-restart"], "a job after the restart")
        workers = faktory_server.workers()
        wids = {w["wid"] for w in workers}
        assert {wid.rsplit("-", 1)[0] for wid in wids} == {"pfx"}, wids
        assert all(w["labels"] == ["blue", "green"] for w in workers), workers
        proc.send_signal(signal.SIGTSTP)  # forwarded: both children go quiet
        logs.wait_for("quiet (asked to quiet)", 2)
        proc.send_signal(signal.SIGINT)  # forwarded too: both children shut down
        logs.wait_for("SIGINT received", 2)
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
    # A limit a worker fits in when idle (a smaller one is refused at start-up), and a
    # job that takes it past it.
    records = [f"m{i}" for i in range(20)]
    app.client.push({"jobtype": "hoard", "args": ["big", 200], "retry": 3})
    app.client.push_bulk([{"jobtype": "record", "args": [m], "retry": 3} for m in records])
    # Not --burst: a burst child can drain the queue and exit before its first memory
    # check; a child that keeps fetching is always there when the check comes.
    with kaffi_worker(
        project, faktory_server.url, "tasks_app:app", "--max-memory-per-child", "150"
    ) as (proc, logs):
        logs.wait_for("above the limit of 150 MB")
        wait_until(lambda: len(read_out(project)) >= len(records) + 1, "every job done")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, logs.text()
    done = read_out(project)
    info = stats(app)
    assert info.sets["working"] == 0
    assert sorted(done) == sorted(["big", *records])
    assert info.queues.get("default", 0) == 0


@pytest.mark.usefixtures("fresh_tasks_module")
def test_every_option_reaches_the_worker(
    project: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[Worker] = []
    monkeypatch.setattr(Worker, "work", lambda self: seen.append(self))
    monkeypatch.chdir(project)
    health = tmp_path / "alive"
    result = CliRunner().invoke(
        main,
        [
            "worker",
            "tasks_app:app",
            "--queues",
            "critical:3,default:1",
            "--concurrency",
            "7",
            "--timeout",
            "2.5",
            "--beat-interval",
            "4",
            "--labels",
            "a, b",
            "--wid",
            "my-wid",
            "--url",
            "tcp://127.0.0.1:7777",
            "--burst",
            "--health-file",
            str(health),
            "--log-level",
            "warning",
            "--log-format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    (worker,) = seen
    assert worker.queues.names == ("critical", "default")
    assert worker.queues.weights == (3, 1)
    assert worker.concurrency == 7
    assert worker.pool_size == 9
    assert worker.timeout == 2.5
    assert worker.beat_interval == 4.0
    assert worker.labels == ("a", "b")
    assert worker.wid == "my-wid"
    assert (worker.settings.host, worker.settings.port) == ("127.0.0.1", 7777)
    assert worker.burst is True
    assert worker.health_file == health
    root = logging.getLogger()
    assert root.level == logging.WARNING
    ours = [h for h in root.handlers if getattr(h, "_kaffi", False)]
    assert len(ours) == 1
    assert isinstance(ours[0].formatter, JsonFormatter)


@pytest.mark.usefixtures("fresh_tasks_module")
@pytest.mark.parametrize(
    ("args", "processes", "max_jobs", "max_memory"),
    [
        (["--processes", "3"], 3, None, None),
        (["--max-jobs-per-child", "50"], 1, 50, None),
        # Above this (test) process's size, which kaffi worker measures as a worker's idle
        # size before it starts the supervisor.
        (["--max-memory-per-child", "100000"], 1, None, 100000.0),
    ],
)
def test_processes_and_child_limits_run_the_supervisor(
    project: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    processes: int,
    max_jobs: int | None,
    max_memory: float | None,
) -> None:
    calls: list[dict[str, Any]] = []

    class FakeSupervisor:
        def __init__(self, app_path: str, **kwargs: Any) -> None:
            calls.append(dict(kwargs, app_path=app_path))

        def run(self) -> int:
            return 0

    monkeypatch.setattr(supervisor, "Supervisor", FakeSupervisor)
    monkeypatch.setattr(Worker, "work", lambda self: pytest.fail("ran in the supervisor"))
    monkeypatch.chdir(project)
    result = CliRunner().invoke(main, ["worker", "tasks_app", "--wid", "pfx", *args])
    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call["app_path"] == "tasks_app"
    assert call["processes"] == processes
    options = call["worker_options"]
    assert options["wid"] == "pfx"
    assert options["max_jobs"] == max_jobs
    assert options["max_memory_mb"] == max_memory
    assert call["cpu_affinity"] == "auto"


def test_wid_labels_beat_interval_health_file_and_log_level_as_a_subprocess(
    app: App, project: Path, faktory_server: Any
) -> None:
    health = project / "alive"

    def me() -> dict[str, Any]:
        found = [w for w in faktory_server.workers() if w["wid"] == "cli-wid-1"]
        return found[0] if found else {"last_beat": 0.0, "labels": None}

    with kaffi_worker(
        project,
        faktory_server.url,
        "tasks_app:app",
        "--wid",
        "cli-wid-1",
        "--labels",
        "web,eu",
        "--beat-interval",
        "0.3",
        "--health-file",
        str(health),
        "--log-level",
        "warning",
    ) as (proc, logs):
        wait_until(lambda: me()["last_beat"] > 0, "the first heartbeat")
        wait_until(health.exists, "the health file")
        first = me()
        assert first["labels"] == ["web", "eu"]
        wait_until(lambda: me()["last_beat"] > first["last_beat"], "the next heartbeat")
        push(app, "record", "quietly")
        wait_until(lambda: read_out(project) == ["quietly"], "the job")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, logs.text()
    # --log-level warning: no INFO lines, so neither "starting" nor the per-job line.
    assert "starting" not in logs.text()
    assert "done record" not in logs.text()


class _ExitedProcess:
    """What the supervisor reads of a child process that has already exited."""

    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode
        self.pid = 4242

    def join(self, timeout: float | None = None) -> None:
        return None


class _SilentPipe:
    """A child's pipe with nothing left to read."""

    closed = False

    def poll(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _exited_child(code: int) -> supervisor._Child:
    return supervisor._Child(1, _ExitedProcess(code), _SilentPipe())  # type: ignore[arg-type]


def test_supervisor_restarts_with_a_jittered_backoff_and_not_what_exited_cleanly() -> None:
    sup = supervisor.Supervisor("tasks_app:app", processes=1, worker_options={})
    sup._backoff = Backoff(supervisor.RESTART_FIRST, supervisor.RESTART_CAP, rng=Random(3))
    twin = Random(3)

    def die(code: int) -> None:
        child = _exited_child(code)
        sup.children.append(child)
        sup._reap(child)

    die(-signal.SIGKILL)
    die(1)
    die(-signal.SIGSEGV)
    waits = [backoff for _, backoff, _ in sup._restarts]
    # Full jitter: uniform(0, RESTART_FIRST * 2**n), drawn from the supervisor's generator.
    assert waits == [twin.uniform(0.0, supervisor.RESTART_FIRST * 2**n) for n in range(3)]
    assert all(0 <= w <= supervisor.RESTART_FIRST * 2**n for n, w in enumerate(waits))
    die(0)  # finished on its own (burst, terminate): not replaced
    stopping = [sup._stopping]
    die(supervisor.EXIT_CONFIG)  # cannot start: restarting would not help, so stop
    stopping.append(sup._stopping)
    assert len(sup._restarts) == 3
    assert sup.children == []
    assert stopping == [False, True], "a child that cannot start must stop the supervisor"
    assert sup._start_failure is not None


def test_a_replacement_child_that_meets_an_outage_is_restarted_not_fatal() -> None:
    def fail(sup: supervisor.Supervisor, kind: str) -> None:
        child = _exited_child(supervisor.EXIT_CONFIG)
        child.failure = (kind, "cannot reach the Faktory server at tcp://127.0.0.1:1")
        sup.children.append(child)
        sup._reap(child)

    # Never reached the server: a set-up mistake, so the supervisor stops.
    first = supervisor.Supervisor("tasks_app:app", processes=1, worker_options={})
    fail(first, "unreachable")
    assert first._stopping
    assert first._start_failure is not None
    assert first._restarts == []

    # Reached it before: an outage, so the child is restarted with backoff.
    later = supervisor.Supervisor("tasks_app:app", processes=1, worker_options={})
    later._server_seen = True
    fail(later, "unreachable")
    assert (later._stopping, later._start_failure) == (False, None)
    ((_, wait, _),) = later._restarts
    assert 0 <= wait <= supervisor.RESTART_FIRST

    # A child that cannot start for another reason (bad app, refused password) still stops it.
    fail(later, "cannot-start")
    assert (later._stopping, later._start_failure is not None) == (True, True)


@pytest.mark.parametrize(
    ("mode", "processes", "allowed", "expected"),
    [
        ("auto", 2, {0, 1}, [0, 1]),
        ("auto", 4, {0, 1}, [0, 1, 0, 1]),
        ("auto", 3, {2, 5, 7}, [2, 5, 7]),
        ("auto", 2, {0, 1, 2, 3}, None),  # CPUs to spare: the kernel places them well
        ("on", 2, {0, 1, 2, 3}, [0, 1]),
        ("on", 5, {3, 1}, [1, 3, 1, 3, 1]),
        ("off", 4, {0, 1}, None),
        ("on", 4, {0}, None),  # one CPU: nothing to choose
        ("auto", 2, None, None),  # the platform cannot pin
    ],
)
def test_plan_affinity(
    mode: str, processes: int, allowed: set[int] | None, expected: list[int] | None
) -> None:
    assert supervisor.plan_affinity(mode, processes, allowed) == expected


def test_plan_affinity_names_a_bad_mode() -> None:
    from kaffi.errors import ValidationError

    with pytest.raises(ValidationError, match="cpu_affinity must be one of auto, on, off"):
        supervisor.plan_affinity("sometimes", 2, {0, 1})


@pytest.mark.usefixtures("fresh_tasks_module")
def test_cpu_affinity_option_reaches_the_supervisor_and_refuses_bad_values(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[dict[str, Any]] = []

    class FakeSupervisor:
        def __init__(self, app_path: str, **kwargs: Any) -> None:
            calls.append(kwargs)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(supervisor, "Supervisor", FakeSupervisor)
    monkeypatch.chdir(project)
    ok = CliRunner().invoke(main, ["worker", "tasks_app", "-p", "2", "--cpu-affinity", "off"])
    assert ok.exit_code == 0, ok.output
    assert [call["cpu_affinity"] for call in calls] == ["off"]
    bad = CliRunner().invoke(main, ["worker", "tasks_app", "-p", "2", "--cpu-affinity", "often"])
    assert bad.exit_code == 2
    assert "--cpu-affinity" in bad.output
    assert "often" in bad.output
    assert len(calls) == 1


def _child_pids(lines: list[str]) -> list[tuple[int, int | None]]:
    """(pid, CPU or None when unpinned) of each "started worker process" line."""
    found: list[tuple[int, int | None]] = []
    for line in lines:
        pid = int(line.split("(pid ")[1].split(",")[0])
        cpu = int(line.split(", CPU ")[1].split(")")[0]) if ", CPU " in line else None
        found.append((pid, cpu))
    return found


@pytest.mark.skipif(
    not (supervisor.allowed_cpus() and len(supervisor.allowed_cpus() or ()) >= 2),
    reason="needs a platform that pins processes and two usable CPUs",
)
def test_cpu_affinity_on_pins_each_child_and_its_replacement(
    app: App, project: Path, faktory_server: Any
) -> None:
    cpus = sorted(supervisor.allowed_cpus() or ())
    with kaffi_worker(
        project,
        faktory_server.url,
        "tasks_app:app",
        "--processes",
        "2",
        "-c",
        "2",
        "--cpu-affinity",
        "on",
    ) as (proc, logs):
        started = _child_pids(logs.wait_for("started worker process", 2))
        assert [cpu for _, cpu in started] == cpus[:2]
        wait_until(lambda: len(faktory_server.workers()) >= 2, "both children to say HELLO")
        for pid, cpu in started:
            # The child pins itself first thing; by its HELLO that is long done.
            assert os.sched_getaffinity(pid) == {cpu}
        # A child killed on the second CPU is replaced on that same CPU.
        os.kill(started[1][0], signal.SIGKILL)
        logs.wait_for("died (killed by SIGKILL)")
        (line,) = logs.wait_for("started worker process 3")
        ((pid, cpu),) = _child_pids([line])
        assert cpu == started[1][1]
        push(app, "record", "pinned")
        wait_until(lambda: read_out(project) == ["pinned"], "a job after the restart")
        wait_until(lambda: os.sched_getaffinity(pid) == {cpu}, "the replacement to pin itself")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0, logs.text()
    assert "pinning each worker process to one CPU" in logs.text()
