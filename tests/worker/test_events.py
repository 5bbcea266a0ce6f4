"""WorkerEvents: the worker's parts (lifecycle, connections, slots) tell the observer what
only the worker loop knows, against a real embedded server."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

from kaffi import App
from kaffi.protocol.models import JobPayload
from kaffi.server import EmbeddedServer
from kaffi.worker import Worker
from kaffi.worker.events import WorkerEvents, observes_jobs
from tests.contrib import metrics_app
from tests.support import running, wait_until


class Recorder(WorkerEvents):
    """Every event, in order, with the worker it came with."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []
        self.workers: set[int] = set()
        self.lock = threading.Lock()

    def _note(self, worker: Worker, what: str, value: object = None) -> None:
        with self.lock:
            self.seen.append((what, value))
            self.workers.add(id(worker))

    def started(self, worker: Worker) -> None:
        self._note(worker, "started")

    def state_changed(self, worker: Worker, state: str) -> None:
        self._note(worker, "state", state)

    def server_reachable(self, worker: Worker, reachable: bool) -> None:
        self._note(worker, "reachable", reachable)

    def fetch_empty(self, worker: Worker) -> None:
        self._note(worker, "fetch_empty")

    def names(self) -> list[tuple[str, object]]:
        with self.lock:
            return list(self.seen)


def test_started_states_and_empty_fetches_in_order(faktory_server: Any) -> None:
    app = App(url=faktory_server.url)
    events = Recorder()
    worker = Worker(app, concurrency=2, queues=["events-empty"], events=events)
    assert worker.events is events
    try:
        with running(worker):
            # An empty queue: the server holds each FETCH ~2 s, then it comes back empty.
            wait_until(lambda: ("fetch_empty", None) in events.names(), "an empty FETCH")
            worker.quiet()
            wait_until(lambda: worker.state == "quiet", "quiet")
    finally:
        app.close()
    seen = events.names()
    assert seen[0] == ("started", None)
    states = [value for what, value in seen if what == "state"]
    assert states == ["quiet", "terminate", "stopped"]
    # Every slot connected once the worker was running: reachable each time, never not.
    reachable = [value for what, value in seen if what == "reachable"]
    assert reachable
    assert set(reachable) == {True}
    assert events.workers == {id(worker)}
    # No empty FETCH is reported after the worker stopped.
    assert seen[-1] == ("state", "stopped")


def test_a_lost_server_is_told_unreachable_then_reachable() -> None:
    server = EmbeddedServer().start()
    port = server.port
    app = App(url=server.url)
    events = Recorder()
    worker = Worker(app, concurrency=1, beat_interval=0.5, events=events)
    try:
        with running(worker):
            wait_until(lambda: ("reachable", True) in events.names(), "the slot's connection")
            server.stop()
            wait_until(lambda: ("reachable", False) in events.names(), "a failed connect")
            server = EmbeddedServer(bind=f"127.0.0.1:{port}").start()
            wait_until(
                lambda: events.names()[-1] == ("reachable", True), "a connect after the outage"
            )
    finally:
        server.stop()
        app.close()
    reachable = [value for what, value in events.names() if what == "reachable"]
    first_down = reachable.index(False)
    assert True in reachable[first_down:]


def test_an_observer_that_raises_is_logged_and_the_worker_runs_on(
    faktory_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(WorkerEvents):
        def state_changed(self, worker: Worker, state: str) -> None:
            raise RuntimeError(f"observer broke on {state}")

    app = App(url=faktory_server.url)
    worker = Worker(app, concurrency=1, events=Broken())
    caplog.set_level(logging.ERROR, logger="kaffi.worker")
    try:
        with running(worker):
            worker.quiet()
            wait_until(lambda: worker.state == "quiet", "quiet")
        assert worker.state == "stopped"
    finally:
        app.close()
    failures = [r.getMessage() for r in caplog.records if "observer" in r.getMessage()]
    assert len(failures) == 3, failures  # quiet, terminate, stopped
    assert all("failed in state_changed" in m for m in failures)


class JobRecorder(WorkerEvents):
    """The job events: (jobtype, outcome) once finished, and how many started."""

    def __init__(self) -> None:
        self.started_jobs = 0
        self.finished: list[tuple[str, str, float]] = []

    def job_started(self, worker: Worker, job: JobPayload) -> None:
        self.started_jobs += 1

    def job_finished(self, worker: Worker, job: JobPayload, duration: float, outcome: str) -> None:
        self.finished.append((job.jobtype, outcome, duration))


def test_each_job_is_told_started_and_finished_with_its_outcome(faktory_server: Any) -> None:
    app = App(url=faktory_server.url)

    @app.task(queue="jobs")
    def fine() -> None:
        time.sleep(0.05)

    @app.task(queue="jobs")
    async def broken() -> None:
        raise RuntimeError("broken")

    # The metrics tests' job a middleware drops, and that middleware.
    skipped = app.task(queue="jobs")(metrics_app.skipped.fn)
    app.use(metrics_app.drop_skipped)
    fine.delay()
    broken.delay()
    skipped.delay()
    events = JobRecorder()
    worker = Worker(app, queues=["jobs"], concurrency=1, burst=True, events=events)
    assert observes_jobs(events)
    assert not observes_jobs(Recorder())
    try:
        with running(worker):
            wait_until(lambda: worker.state == "stopped", "the burst worker to stop")
    finally:
        app.close()
    assert events.started_jobs == 3
    outcomes = {jobtype: outcome for jobtype, outcome, _ in events.finished}
    assert outcomes == {"fine": "ok", "broken": "failed", "skipped": "dropped"}
    (fine_duration,) = [d for jobtype, _, d in events.finished if jobtype == "fine"]
    assert fine_duration >= 0.05


def test_a_job_observer_that_raises_does_not_fail_the_job(
    faktory_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(WorkerEvents):
        def job_finished(
            self, worker: Worker, job: JobPayload, duration: float, outcome: str
        ) -> None:
            raise RuntimeError("observer broke")

    app = App(url=faktory_server.url)
    ran: list[int] = []

    @app.task(queue="jobs-broken-observer")
    def note(n: int) -> None:
        ran.append(n)

    note.delay(1)
    worker = Worker(app, queues=["jobs-broken-observer"], concurrency=1, events=Broken())
    caplog.set_level(logging.ERROR, logger="kaffi.worker")
    try:
        with running(worker):
            wait_until(lambda: worker.processed == 1, "the job")
        assert worker.failed == 0
    finally:
        app.close()
    assert ran == [1]
    assert any("job observer" in r.getMessage() for r in caplog.records)
