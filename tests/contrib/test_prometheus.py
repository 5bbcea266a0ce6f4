"""Worker and push metrics: ``kaffi.contrib.prometheus`` in-process, and ``kaffi worker
--metrics`` as a real process with 1 and 2 worker processes, read back through
prometheus-client's own parser."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.samples import Sample

from kaffi import App, Client
from kaffi.app.execution import JobContext
from kaffi.app.push import PushContext
from kaffi.contrib.addresses import parse_listen_address
from kaffi.contrib.prometheus import (
    MultiprocessMetrics,
    PushMetrics,
    WorkerMetrics,
    parse_buckets,
    serve_metrics,
    start_worker_metrics,
)
from kaffi.errors import ConfigurationError, TransportError
from kaffi.worker import Worker
from tests.contrib import metrics_app
from tests.contrib.helpers import REPO_ROOT, parse, scrape, served_url, total, value
from tests.support import WAIT, running, wait_until
from tests.worker.conftest import kaffi_worker

# -- addresses and buckets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9191", ("127.0.0.1", 9191)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        (":9191", ("127.0.0.1", 9191)),
        ("9191", ("127.0.0.1", 9191)),
        ("[::1]:9191", ("::1", 9191)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_listen_address_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "HOST:PORT"),
        ("127.0.0.1:", "port must be a number"),
        ("127.0.0.1:http", "port must be a number"),
        ("127.0.0.1:65536", "0 to 65535"),
        ("::1:9191", "brackets"),
        ("[::1]9191", "HOST:PORT"),
        ("bad host:1", "HOST:PORT"),
    ],
)
def test_bad_listen_addresses_are_named(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match="--metrics must be HOST:PORT") as caught:
        parse_listen_address(text, what="--metrics")
    assert says in str(caught.value)
    assert repr(text) in str(caught.value)


def test_buckets() -> None:
    assert parse_buckets("0.1, 1,10") == (0.1, 1.0, 10.0)
    for text, says in (
        ("0.1,x", "'x' is not a number"),
        ("1,0.5", "must increase"),
        ("0,1", "positive"),
        ("inf", "positive"),
        (" , ", "no histogram buckets"),
    ):
        with pytest.raises(ConfigurationError, match=says):
            parse_buckets(text)


def test_bad_buckets_name_the_option() -> None:
    # KAFFI_METRICS_BUCKETS may come from the environment: the error says where to look.
    with contextlib.ExitStack() as cleanup, pytest.raises(ConfigurationError) as caught:
        start_worker_metrics(cleanup, "127.0.0.1:0", "0.1,x")
    assert str(caught.value) == (
        "--metrics-buckets '0.1,x': histogram bucket 'x' is not a number"
        " (buckets are seconds, like 0.1,1,10)"
    )


def test_a_tally_publishes_in_bulk_exactly_what_observe_would() -> None:
    # The bulk path adds to the histogram's own bucket values; the public path (taken when a
    # prometheus-client lacks them) observes one by one. Both must expose the same text.
    from prometheus_client import Histogram

    from kaffi.contrib.prometheus import _Tally

    bounds = (0.01, 0.1, 1.0)
    values = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1.0, 2.5, 1e9]
    texts = []
    for in_bulk in (True, False, None):
        registry = CollectorRegistry()
        child = Histogram("t", "doc", ["q"], buckets=bounds, registry=registry).labels("a")
        tally = _Tally((*bounds, float("inf")))
        for v in values:
            tally.add(v)
        tally.publish(child, in_bulk=in_bulk)
        tally.publish(child, in_bulk=in_bulk)  # nothing new: nothing added twice
        text = generate_latest(registry).decode()
        # t_created is each histogram's creation time: the one line that may differ.
        texts.append("".join(line for line in text.splitlines(True) if "_created" not in line))
    assert texts[0] == texts[1] == texts[2]
    assert 't_bucket{le="0.01",q="a"} 2.0' in texts[0]  # 0.0 and 0.01 (bounds hold)
    assert 't_bucket{le="1.0",q="a"} 7.0' in texts[0]
    assert 't_count{q="a"} 9.0' in texts[0]


# -- in-process -----------------------------------------------------------------------------


def _drop_skipped(ctx: JobContext, next: Callable[[], Any]) -> Any:
    # A plain middleware: the metrics must see the drop through a thread hop too.
    if ctx.jobtype != "skipped":
        next()


def _metrics_app(url: str) -> App:
    app = App(url)

    @app.task(queue="m")
    def ok(n: int) -> int:
        return n

    @app.task(queue="m")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.task(queue="m")
    def skipped() -> None:
        raise AssertionError("dropped by the middleware")

    app.use(_drop_skipped)
    for n in range(3):
        ok.delay(n)
    boom.delay()
    skipped.delay()
    return app


def _drain(app: App, metrics: WorkerMetrics, registry: CollectorRegistry) -> list[Sample]:
    """Run a burst worker of ``app`` with ``metrics`` to the end; the samples then."""
    try:
        worker = app.worker(queues="m", burst=True, concurrency=2, events=metrics)
        with running(worker):
            wait_until(lambda: worker.state == "stopped", "the burst worker to stop")
        return parse(generate_latest(registry).decode())
    finally:
        app.close()


def test_worker_metrics_in_process(faktory_server: Any) -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, buckets=(0.5, 5.0))
    app = _metrics_app(faktory_server.url)
    samples = _drain(app, metrics, registry)
    jobs = "kaffi_jobs_total"
    assert value(samples, jobs, jobtype="ok", queue="m", outcome="ok") == 3
    assert value(samples, jobs, jobtype="boom", queue="m", outcome="failed") == 1
    assert value(samples, jobs, jobtype="skipped", queue="m", outcome="dropped") == 1
    assert total(samples, jobs) == 5
    assert value(samples, "kaffi_job_duration_seconds_count", jobtype="ok") == 3
    buckets = {s.labels["le"] for s in samples if s.name == "kaffi_job_duration_seconds_bucket"}
    assert buckets == {"0.5", "5.0", "+Inf"}
    assert value(samples, "kaffi_job_latency_seconds_count", queue="m") == 5
    assert total(samples, "kaffi_jobs_in_progress") == 0
    assert (value(samples, "kaffi_fetch_empty_total") or 0) >= 1  # burst ends on an empty one
    assert value(samples, "kaffi_worker_state", state="stopped") == 1
    assert value(samples, "kaffi_worker_state", state="running") == 0
    assert value(samples, "kaffi_server_reachable") == 1
    # The worker told it about each job: no middleware of its own in the chain.
    assert app.middleware == [_drop_skipped]


def test_a_worker_takes_measure_out_of_the_chain(faktory_server: Any) -> None:
    """install() is for jobs run outside a worker; a worker counts each job once anyway."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    app = _metrics_app(faktory_server.url)
    metrics.install(app)
    metrics.install(app)
    assert app.middleware == [metrics.measure, _drop_skipped]
    samples = _drain(app, metrics, registry)
    assert app.middleware == [_drop_skipped]
    assert total(samples, "kaffi_jobs_total") == 5
    assert value(samples, "kaffi_jobs_total", jobtype="skipped", outcome="dropped") == 1


def test_in_progress_and_state_while_running(faktory_server: Any) -> None:
    import threading

    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, publish_interval=0.05)
    app = App(faktory_server.url)
    entered, release = threading.Event(), threading.Event()

    def in_progress() -> float | None:
        return value(parse(generate_latest(registry).decode()), "kaffi_jobs_in_progress")

    @app.task
    def hold() -> None:
        entered.set()
        release.wait(WAIT)

    hold.delay()
    try:
        worker = app.worker(concurrency=1, events=metrics)
        with running(worker):
            assert entered.wait(WAIT)
            # Published by the loop's timer while the job still runs.
            wait_until(lambda: in_progress() == 1, "the running job to show")
            samples = parse(generate_latest(registry).decode())
            assert value(samples, "kaffi_worker_state", state="running") == 1
            worker.quiet()
            wait_until(lambda: worker.state == "quiet", "quiet")
            samples = parse(generate_latest(registry).decode())
            assert value(samples, "kaffi_worker_state", state="quiet") == 1
            assert value(samples, "kaffi_worker_state", state="running") == 0
            release.set()
    finally:
        release.set()
        app.close()
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "kaffi_jobs_in_progress", jobtype="hold") == 0
    assert value(samples, "kaffi_jobs_total", jobtype="hold", outcome="ok") == 1


def test_server_reachable_follows_connects() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    worker = Worker(App(), events=metrics)
    metrics.server_reachable(worker, False)
    assert value(parse(generate_latest(registry).decode()), "kaffi_server_reachable") == 0
    metrics.server_reachable(worker, True)
    assert value(parse(generate_latest(registry).decode()), "kaffi_server_reachable") == 1


def test_a_failing_observer_does_not_stop_the_worker(
    faktory_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(WorkerMetrics):
        def fetch_empty(self, worker: Any) -> None:
            raise RuntimeError("observer bug")

    registry = CollectorRegistry()
    app = App(faktory_server.url)

    @app.task
    def fine() -> None:
        """Runs."""

    fine.delay()
    try:
        worker = app.worker(burst=True, events=Broken(registry))
        with running(worker):
            wait_until(lambda: worker.state == "stopped", "the burst worker to stop")
    finally:
        app.close()
    assert worker.processed == 1
    assert "observer bug" in caplog.text


def test_worker_metrics_travel_as_settings() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry, buckets=(1.0, 2.0))
    metrics.collectors.fetch_empty.inc()
    copy = pickle.loads(pickle.dumps(metrics))
    assert copy.buckets == (1.0, 2.0)
    assert copy.latency_buckets == metrics.latency_buckets
    assert copy._collectors is None  # made again, in the process that uses them


def test_push_metrics(faktory_server: Any) -> None:
    registry = CollectorRegistry()
    app = App(faktory_server.url)
    PushMetrics(registry).install(app)

    @app.task(queue="q1")
    def sent() -> None:
        """Pushed."""

    def drop_some(ctx: PushContext, next: Callable[[], None]) -> None:
        if ctx.job.args != ["drop"]:
            next()

    @app.task
    def maybe(x: str) -> None:
        """Pushed unless x == 'drop'."""

    app.use_push(drop_some)
    try:
        sent.delay()
        sent.delay()
        maybe.delay("keep")
        maybe.delay("drop")
    finally:
        app.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    offline = App(f"tcp://127.0.0.1:{closed}", connect_timeout=2)
    offline_registry = CollectorRegistry()
    PushMetrics(offline_registry).install(offline)

    @offline.task
    def lost() -> None:
        """Never arrives."""

    with pytest.raises(TransportError):
        lost.delay()
    offline.close()

    samples = parse(generate_latest(registry).decode())
    assert value(samples, "kaffi_jobs_pushed_total", jobtype="sent", queue="q1") == 2
    assert value(samples, "kaffi_jobs_pushed_total", jobtype="maybe", queue="default") == 1
    assert value(samples, "kaffi_push_errors_total", reason="transport") is None
    offline_samples = parse(generate_latest(offline_registry).decode())
    assert value(offline_samples, "kaffi_push_errors_total", reason="transport") == 1
    assert value(offline_samples, "kaffi_jobs_pushed_total", jobtype="lost") is None


def test_serve_metrics_over_http_and_a_busy_port() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    metrics.collectors.fetch_empty.inc(3)
    with serve_metrics("127.0.0.1:0", registry) as server:
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert value(scrape(server.url), "kaffi_fetch_empty_total") == 3
        with pytest.raises(
            ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"
        ):
            serve_metrics(f"127.0.0.1:{server.port}", registry)


def test_multiprocess_directory_is_emptied_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    given = tmp_path / "given"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"stale")
    (given / "keep.txt").write_text("not ours")
    shared = MultiprocessMetrics(given)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(given)
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]
    shared.close()
    assert given.is_dir()  # given, so not ours to remove
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    made = MultiprocessMetrics()
    assert made.directory.is_dir()
    made.close()
    assert not made.directory.exists()


# -- kaffi worker --metrics, as a real process -----------------------------------------------

JOBS = {"ok": 4, "boom": 1, "skipped": 1}


def _push_jobs(url: str) -> None:
    with Client(url) as client:
        for jobtype, count in JOBS.items():
            for n in range(count):
                client.push(
                    {"jobtype": jobtype, "args": [n] if jobtype == "ok" else [], "queue": "metrics"}
                )


def _check_job_counts(samples: list[Any]) -> None:
    jobs = "kaffi_jobs_total"
    assert value(samples, jobs, jobtype="ok", queue="metrics", outcome="ok") == 4
    assert value(samples, jobs, jobtype="ok", queue="metrics", outcome="failed") == 0
    assert value(samples, jobs, jobtype="boom", queue="metrics", outcome="failed") == 1
    assert value(samples, jobs, jobtype="skipped", queue="metrics", outcome="dropped") == 1
    assert value(samples, "kaffi_job_duration_seconds_count", jobtype="ok", queue="metrics") == 4
    assert value(samples, "kaffi_job_latency_seconds_count", queue="metrics") == 6
    assert total(samples, "kaffi_jobs_in_progress") == 0
    assert value(samples, "kaffi_server_reachable") == 1


def _finished(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return total(scrape(url), "kaffi_jobs_total") >= sum(JOBS.values())

    return check


@pytest.mark.slow
def test_kaffi_worker_metrics_one_process(faktory_server: Any) -> None:
    _push_jobs(faktory_server.url)
    with kaffi_worker(
        REPO_ROOT,
        faktory_server.url,
        "tests.contrib.metrics_app:app",
        "--queues",
        "metrics",
        "--metrics",
        "127.0.0.1:0",
        "--metrics-buckets",
        "0.25,2.5",
    ) as (proc, reader):
        url = served_url(reader)
        wait_until(_finished(url), "the jobs to be counted")
        samples = scrape(url)
        _check_job_counts(samples)
        assert value(samples, "kaffi_worker_state", state="running") == 1
        buckets = {s.labels["le"] for s in samples if s.name == "kaffi_job_duration_seconds_bucket"}
        assert buckets == {"0.25", "2.5", "+Inf"}
        # The default collectors: the process's own numbers.
        assert (value(samples, "process_resident_memory_bytes") or 0) > 0
        assert value(samples, "process_start_time_seconds") is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


@pytest.mark.slow
def test_kaffi_worker_metrics_two_processes(
    faktory_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "multiproc"
    shared.mkdir()
    (shared / "counter_99999999.db").write_bytes(b"left by an earlier run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    _push_jobs(faktory_server.url)
    with kaffi_worker(
        REPO_ROOT,
        faktory_server.url,
        "tests.contrib.metrics_app:app",
        "--queues",
        "metrics",
        "--processes",
        "2",
        "--concurrency",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ) as (proc, reader):
        url = served_url(reader)
        wait_until(_finished(url), "the jobs to be counted")
        wait_until(
            lambda: value(scrape(url), "kaffi_worker_state", state="running") == 2,
            "both processes running",
        )
        samples = scrape(url)
        _check_job_counts(samples)
        assert not (shared / "counter_99999999.db").exists()
        # The empty FETCHes of the children, added up (the server holds one ~2 s).
        wait_until(
            lambda: (value(scrape(url), "kaffi_fetch_empty_total") or 0) >= 2,
            "empty FETCHes to be counted",
        )
        # A child killed: its live gauges go with it, its replacement counts instead.
        pids = [
            int(line.split("(pid ")[1].split(",")[0])
            for line in reader.wait_for("started worker process")
        ]
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        reader.wait_for("started worker process", count=3)
        wait_until(
            lambda: not list(shared.glob(f"gauge_live*_{victim}.db")),
            "the dead child's live gauges to be dropped",
        )
        wait_until(
            lambda: value(scrape(url), "kaffi_worker_state", state="running") == 2,
            "two running processes after the restart",
        )
        # Counters keep what the dead child did.
        _check_job_counts(scrape(url))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0
    assert shared.is_dir()  # the operator's directory is left in place


@pytest.mark.parametrize("how", ["option", "environment"])
def test_bad_metrics_address_is_one_line(faktory_server: Any, how: str) -> None:
    import subprocess
    import sys

    given = ["--metrics", "127.0.0.1:http"] if how == "option" else []
    env = dict(os.environ, KAFFI_METRICS="127.0.0.1:http") if how == "environment" else None
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaffi",
            "worker",
            "tests.contrib.metrics_app:app",
            "--url",
            faktory_server.url,
            *given,
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "kaffi: error: --metrics must be HOST:PORT (like 127.0.0.1:9191, [::1]:9191 or :9191),"
        " got '127.0.0.1:http': the port must be a number from 0 to 65535"
    ], result.stderr


def test_outside_a_worker_every_job_is_published_at_once() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    app = App(testing="inline")

    @app.task
    def alone(x: int) -> int:
        return x

    metrics.install(app)
    assert app.middleware == [metrics.measure]
    alone.delay(1)
    alone.delay(2)
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "kaffi_jobs_total", jobtype="alone", outcome="ok") == 2
    assert value(samples, "kaffi_job_duration_seconds_count", jobtype="alone") == 2


def test_outside_a_worker_dropped_and_failed_jobs_are_told_apart() -> None:
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    app = App(testing="inline")
    skipped = app.task(metrics_app.skipped.fn)
    boom = app.task(metrics_app.boom.fn)
    app.use(_drop_skipped)
    metrics.install(app)
    skipped.delay()
    with pytest.raises(RuntimeError, match="boom on purpose"):
        boom.delay()
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "kaffi_jobs_total", jobtype="skipped", outcome="dropped") == 1
    assert value(samples, "kaffi_jobs_total", jobtype="boom", outcome="failed") == 1
    assert total(samples, "kaffi_jobs_in_progress") == 0
