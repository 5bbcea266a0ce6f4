"""Worker faults: SIGTERM under load, SIGKILL, a job that hangs, eats memory or exits.

The workers are real ``kaffi worker`` subprocesses against an in-process embedded
server, so the test can read INFO and move the server's clock (``advance_clock``) to
make reservations lapse without waiting 60 s. Every job appends its jid to a file when
it finishes; the figures in the assertion messages come from that file and INFO.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kaffi
from kaffi.server import EmbeddedServer
from tests.reliability.support import Proc, Project, Tally, kaffi_process, sets_and_queues
from tests.support import WAIT, embedded_server, wait_until

pytestmark = pytest.mark.reliability

#: Past any reservation (jobs here reserve for 60 s, the minimum).
RESERVATION_LAPSE = 61.0
#: Past the first retry's delay (at most 0**4 + 15 + 29 * 1 = 44 s).
FIRST_RETRY_DUE = 60.0


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    with embedded_server() as srv:
        yield srv


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project.create(tmp_path)


def worker_args(*extra: str) -> list[str]:
    return ["worker", "rel_app:app", "--log-level", "info", *extra]


def push_jobs(
    client: kaffi.Client, jobtype: str, args_list: list[list[Any]], **fields: Any
) -> list[str]:
    jobs = [
        {"jid": kaffi.Job.new_jid(), "jobtype": jobtype, "args": args, "reserve_for": 60, **fields}
        for args in args_list
    ]
    rejected = client.push_bulk(jobs)
    assert not rejected, rejected
    return [job["jid"] for job in jobs]


def stats(server: EmbeddedServer) -> tuple[dict[str, int], dict[str, int]]:
    return sets_and_queues(server.info())


def drain(server: EmbeddedServer, project: Project, *extra: str) -> None:
    """Run a burst worker until every queue it serves is empty, then check it exited 0."""
    with kaffi_process(
        worker_args("--burst", "--concurrency", "20", "--timeout", "5", *extra),
        cwd=project.root,
        env=project.env(server.url),
    ) as proc:
        code = proc.wait(WAIT)
        assert code == 0, f"the burst worker exited {code}:\n" + "\n".join(proc.log.lines[-20:])


def failures_in_retry_set(
    client: kaffi.Client, queue: str = "default"
) -> dict[str, tuple[str, str]]:
    """Requeue the retry set and fetch each job back once: jid -> (errtype, message).
    The jobs are ACKed afterwards (the caller decides what else to run)."""
    count = client.info().faktory.sets["retries"]
    client.retries.requeue()
    found: dict[str, tuple[str, str]] = {}
    for _ in range(count):
        job = client.fetch(queue)
        assert job is not None, f"a job of the retry set did not come back ({len(found)}/{count})"
        assert job.failure is not None, f"job {job.jid} came back without a failure record"
        found[job.jid] = (job.failure.errtype or "", job.failure.message or "")
        client.ack(job.jid)
    return found


def sigterm_and_time(proc: Proc, bound: float) -> float:
    started = time.monotonic()
    proc.signal(signal.SIGTERM)
    code = proc.wait(bound + 10)
    elapsed = time.monotonic() - started
    assert code == 0, f"exit status {code} after SIGTERM:\n" + "\n".join(proc.log.lines[-20:])
    return elapsed


# -- SIGTERM under load -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("processes", "concurrency"), [(1, 20), (2, 10)], ids=["one process", "supervisor"]
)
def test_sigterm_under_load_loses_nothing(
    server: EmbeddedServer, project: Project, processes: int, concurrency: int
) -> None:
    jobs, seconds, timeout = 800, 0.05, 5.0
    tally = Tally()
    with kaffi.Client(server.url, timeout=10) as client:
        tally.pushed = set(push_jobs(client, "work", [[n, seconds] for n in range(jobs)]))
        with kaffi_process(
            worker_args(
                "--concurrency",
                str(concurrency),
                "--processes",
                str(processes),
                "--timeout",
                str(timeout),
            ),
            cwd=project.root,
            env=project.env(server.url),
        ) as proc:
            wait_until(lambda: len(project.runs()) >= 100, "100 jobs to finish before SIGTERM")
            busy = stats(server)[0]["working"]
            elapsed = sigterm_and_time(proc, timeout + 2)
        tally.record_runs(project.runs())
        sets, queues = stats(server)
        figures = tally.figures(
            final=False,
            working_at_sigterm=busy,
            exit_seconds=f"{elapsed:.2f}",
            queued=queues.get("default", 0),
            retries=sets["retries"],
            dead=sets["dead"],
            working=sets["working"],
        )
        assert elapsed <= timeout + 2, f"the worker took too long to exit: {figures}"
        assert sets["working"] == 0, f"jobs left reserved after SIGTERM: {figures}"
        assert tally.duplicated == 0, figures
        assert not tally.unexpected, figures
        assert 0 < tally.processed < jobs, f"SIGTERM did not land under load: {figures}"
        accounted = tally.processed + queues.get("default", 0) + sets["retries"] + sets["dead"]
        assert accounted == jobs, f"done + queued + retries + dead != pushed: {figures}"
        # Whatever was given back runs to the end once the retries are due again.
        client.retries.requeue()
        drain(server, project)
        tally.record_runs(project.runs())
        sets, queues = stats(server)
        figures = tally.figures(queued=queues.get("default", 0), retries=sets["retries"])
        assert not tally.lost, f"jobs lost after SIGTERM: {figures}"
        assert tally.duplicated == 0, f"jobs ran twice after SIGTERM: {figures}"
        assert sets["working"] == 0, figures
        assert queues.get("default", 0) == 0, figures


# -- SIGKILL ----------------------------------------------------------------------------------


def test_sigkill_jobs_come_back_when_their_reservation_lapses(
    server: EmbeddedServer, project: Project
) -> None:
    jobs, concurrency = 30, 10
    tally = Tally()
    with kaffi.Client(server.url, timeout=10) as client:
        tally.pushed = set(push_jobs(client, "gated", [[n] for n in range(jobs)], retry=5))
        with kaffi_process(
            worker_args("--concurrency", str(concurrency)),
            cwd=project.root,
            env=project.env(server.url),
        ) as proc:
            wait_until(
                lambda: stats(server)[0]["working"] == concurrency,
                lambda: f"{concurrency} jobs held, sets={stats(server)[0]}",
            )
            proc.kill()
        sets, queues = stats(server)
        held = sets["working"]
        assert held == concurrency, f"reservations vanished with the worker: {sets}"
        assert queues["default"] == jobs - concurrency, queues
        assert project.runs() == [], "a gated job finished before the gate opened"

        project.gate.write_text("open")
        server.advance_clock(RESERVATION_LAPSE)
        sets, queues = stats(server)
        assert sets["working"] == 0, f"lapsed reservations did not go to the retry set: sets={sets}"
        assert sets["retries"] == held, (
            f"lapsed reservations did not go to the retry set: sets={sets}"
        )
        server.advance_clock(FIRST_RETRY_DUE)
        sets, queues = stats(server)
        assert sets["retries"] == 0, (
            f"due retries did not go back to the queue: sets={sets} queues={queues}"
        )
        assert queues["default"] == jobs, (
            f"due retries did not go back to the queue: sets={sets} queues={queues}"
        )
        drain(server, project)
        tally.record_runs(project.runs())
        sets, queues = stats(server)
        figures = tally.figures(
            held_when_killed=held, retries=sets["retries"], working=sets["working"]
        )
        assert not tally.lost, f"jobs vanished after SIGKILL: {figures}"
        assert tally.duplicated == 0, figures
        assert tally.processed == jobs, figures
        assert sets["working"] == 0, figures


# -- a job that hangs past the shutdown timeout --------------------------------------------


def test_a_job_hanging_past_the_timeout_is_failed_and_the_next_jobs_run(
    server: EmbeddedServer, project: Project
) -> None:
    timeout = 1.0
    with kaffi.Client(server.url, timeout=10) as client:
        (hung,) = push_jobs(client, "started", [[0]], retry=5)
        with kaffi_process(
            worker_args("--concurrency", "2", "--timeout", str(timeout)),
            cwd=project.root,
            env=project.env(server.url),
        ) as proc:
            wait_until(lambda: project.tagged("started") == [hung], "the hanging job to start")
            elapsed = sigterm_and_time(proc, timeout + 2)
        sets, queues = stats(server)
        figures = f"exit_seconds={elapsed:.2f}, sets={sets}, queues={queues}"
        assert elapsed <= timeout + 2, f"a hanging job kept the worker alive: {figures}"
        assert sets["working"] == 0, figures
        assert sets["retries"] == 1, figures
        failures = failures_in_retry_set(client)
        assert set(failures) == {hung}, failures
        errtype, message = failures[hung]
        assert errtype == "WorkerShutdown", failures
        assert "still running" in message, failures

        later = push_jobs(client, "work", [[n, 0.01] for n in range(10)])
        drain(server, project)
        ran = project.runs()
        assert set(later) <= set(ran), f"the next jobs did not run: {len(set(later) & set(ran))}/10"


# -- --processes: a job that exhausts memory, a job that calls os._exit -----------------------


def _supervised(server: EmbeddedServer, project: Project, concurrency: int = 2) -> Any:
    return kaffi_process(
        worker_args("--processes", "2", "--concurrency", str(concurrency), "--timeout", "2"),
        cwd=project.root,
        env=project.env(server.url),
    )


def test_a_job_exhausting_memory_in_a_child_is_failed_and_the_rest_run(
    server: EmbeddedServer, project: Project
) -> None:
    with kaffi.Client(server.url, timeout=10) as client:
        (hog,) = push_jobs(client, "hog", [[8192]], retry=5)
        later = push_jobs(client, "work", [[n, 0.01] for n in range(20)])
        with _supervised(server, project) as proc:

            def settled() -> bool:
                sets = stats(server)[0]
                if not set(later) <= set(project.runs()):
                    return False
                # FAILed with MemoryError, or its child died holding it.
                died = any("died" in line for line in proc.log.lines)
                return sets["retries"] == 1 or (died and sets["working"] == 1)

            wait_until(
                settled,
                lambda: (
                    f"the 20 later jobs and the hog's end; runs={len(project.runs())},"
                    f" sets={stats(server)[0]}"
                ),
            )
            if stats(server)[0]["retries"] != 1:
                # The allocation killed the child outright: its reservation lapses and
                # the job comes back like any lost job.
                server.advance_clock(RESERVATION_LAPSE)
            assert proc.alive(), "the supervisor died:\n" + proc.log.text()[-2000:]
            more = push_jobs(client, "work", [[n, 0.01] for n in range(5)])
            wait_until(lambda: set(more) <= set(project.runs()), "jobs pushed after the hog to run")
            assert proc.alive(), "the supervisor died:\n" + proc.log.text()[-2000:]
            sigterm_and_time(proc, 2 + 20)
        # Read the failure once no worker is left to fetch the requeued job first.
        failures = failures_in_retry_set(client)
        assert project.tagged("hog-survived") == [], "the allocation was not refused"
        assert set(failures) == {hog}, failures
        errtype, _message = failures[hog]
        assert errtype in ("MemoryError", "ReservationExpired"), failures


def test_a_job_calling_os_exit_in_a_child_comes_back_and_the_rest_run(
    server: EmbeddedServer, project: Project
) -> None:
    marker = project.root / "exited-once"
    tally = Tally()
    with kaffi.Client(server.url, timeout=10) as client:
        (leaver,) = push_jobs(client, "exit_once", [[str(marker)]], retry=5)
        later = push_jobs(client, "work", [[n, 0.01] for n in range(20)])
        tally.pushed = {leaver, *later}
        # One job per child: the dead child held exactly the leaver.
        with _supervised(server, project, concurrency=1) as proc:
            proc.log.wait_for("died")
            wait_until(
                lambda: set(later) <= set(project.runs()) and stats(server)[0]["working"] == 1,
                lambda: (
                    f"the later jobs to run in the other children; runs={len(project.runs())},"
                    f" sets={stats(server)[0]}"
                ),
            )
            held = stats(server)[0]["working"]
            assert marker.exists()
            assert leaver not in project.runs()
            server.advance_clock(RESERVATION_LAPSE)
            assert stats(server)[0]["retries"] == held, stats(server)
            server.advance_clock(FIRST_RETRY_DUE)
            wait_until(
                lambda: project.tagged("rerun") == [leaver] and set(later) <= set(project.runs()),
                lambda: (
                    f"the held jobs to run again; runs={len(project.runs())}, sets={stats(server)}"
                ),
            )
            more = push_jobs(client, "work", [[n, 0.01] for n in range(5)])
            tally.pushed |= set(more)
            wait_until(
                lambda: set(more) <= set(project.runs()), "jobs pushed after the exit to run"
            )
            assert proc.alive(), "the supervisor died:\n" + proc.log.text()[-2000:]
            assert "restarting" in proc.log.text(), "the supervisor did not restart the child"
            sigterm_and_time(proc, 2 + 20)
        tally.record_runs(project.runs())
        sets, _queues = stats(server)
        figures = tally.figures(
            held_by_dead_child=held, working=sets["working"], retries=sets["retries"]
        )
        assert sets["working"] == 0, figures
        assert sets["retries"] == 0, figures
        assert not tally.lost, figures
        assert not tally.unexpected, figures
        assert tally.runs[leaver] == 1, figures
