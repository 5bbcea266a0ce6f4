"""``kaffi exporter``: the server's numbers through FaktoryCollector, in-process and as a
real process, against the embedded server and against a closed port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from kaffi import Client
from kaffi.contrib.exporter import FaktoryCollector
from kaffi.protocol.models import Info
from tests.contrib.helpers import REPO_ROOT, parse, scrape, served_url, value
from tests.support import WAIT, LogLines, kaffi_process, wait_until


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _fill(client: Client) -> None:
    """Two jobs in ``emails``, one in ``reports``, one scheduled, one retrying, one processed."""
    client.push({"jobtype": "send", "args": [1], "queue": "emails"})
    client.push({"jobtype": "send", "args": [2], "queue": "emails"})
    client.push({"jobtype": "build", "args": [], "queue": "reports"})
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    client.push({"jobtype": "later", "args": [], "queue": "emails", "at": later})
    client.push({"jobtype": "flaky", "args": [], "queue": "flaky"})
    client.push({"jobtype": "fine", "args": [], "queue": "fine"})
    worker = Client(settings=client.settings, wid="exporter-test-wid")
    with worker:
        flaky = worker.fetch("flaky")
        assert flaky is not None
        worker.fail(flaky.jid, RuntimeError("try again"))
        fine = worker.fetch("fine")
        assert fine is not None
        worker.ack(fine.jid)


def test_collector_against_the_embedded_server(kaffi_client: Client) -> None:
    kaffi_client.flush()
    _fill(kaffi_client)
    registry = CollectorRegistry()
    registry.register(FaktoryCollector(kaffi_client, cache_seconds=0))
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "faktory_up") == 1
    assert value(samples, "faktory_queue_size", queue="emails") == 2
    assert value(samples, "faktory_queue_size", queue="reports") == 1
    latency = value(samples, "faktory_queue_latency_seconds", queue="emails")
    assert latency is not None
    assert 0 <= latency < WAIT
    assert value(samples, "faktory_set_size", set="scheduled") == 1
    assert value(samples, "faktory_set_size", set="retries") == 1
    assert value(samples, "faktory_set_size", set="dead") == 0
    assert value(samples, "faktory_set_size", set="working") == 0
    assert (value(samples, "faktory_processed_total") or 0) >= 1
    assert (value(samples, "faktory_failures_total") or 0) >= 1
    assert (value(samples, "faktory_connections") or 0) >= 1


class _CountingClient(Client):
    """A real client that records how many INFOs are in flight at once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.most_in_flight = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def info(self) -> Info:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.entered.set()
        try:
            self.release.wait(WAIT)  # hold the INFO open while the other scrapes arrive
            return super().info()
        finally:
            with self.lock:
                self.in_flight -= 1


def test_one_info_in_flight_and_the_cache(faktory_server: Any) -> None:
    now = [100.0]
    client = _CountingClient(faktory_server.url, pool_size=4)
    try:
        collector = FaktoryCollector(client, cache_seconds=5, clock=lambda: now[0])
        results: list[object] = []
        scrapes = [
            threading.Thread(target=lambda: results.append(collector.snapshot())) for _ in range(4)
        ]
        for t in scrapes:
            t.start()
        assert client.entered.wait(WAIT)
        client.release.set()
        for t in scrapes:
            t.join(WAIT)
        assert len(results) == 4
        assert all(r is results[0] for r in results)
        assert client.most_in_flight == 1
        assert collector.asked == 1
        now[0] += 4.9  # still fresh
        assert collector.snapshot() is results[0]
        assert collector.asked == 1
        now[0] += 0.2  # stale: asked again
        assert collector.snapshot() is not results[0]
        assert collector.asked == 2
    finally:
        client.close()


def test_unreachable_server_is_up_zero(caplog: pytest.LogCaptureFixture) -> None:
    with Client(f"tcp://127.0.0.1:{_closed_port()}", connect_timeout=2) as client:
        registry = CollectorRegistry()
        registry.register(FaktoryCollector(client, cache_seconds=0))
        for _ in range(2):
            samples = parse(generate_latest(registry).decode())
            assert [(s.name, s.value) for s in samples] == [("faktory_up", 0.0)]
    warnings = [r for r in caplog.records if "faktory_up is 0" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per scrape


def test_a_failed_ask_is_cached_like_an_answer() -> None:
    # A server that hangs makes each ask last the client's timeout: scrapes queued behind
    # the failing one, or coming within cache_seconds, get its failure instead of asking
    # again one after the other (which took them 5, 10, 15 s).
    now = [100.0]
    with Client(f"tcp://127.0.0.1:{_closed_port()}", connect_timeout=2) as client:
        collector = FaktoryCollector(client, cache_seconds=5, clock=lambda: now[0])
        assert collector.snapshot() is None
        assert collector.asked == 1
        now[0] += 4.9
        assert collector.snapshot() is None
        assert collector.asked == 1
        now[0] += 0.2  # the failure is stale: asked again
        assert collector.snapshot() is None
        assert collector.asked == 2


@contextmanager
def _exporter(*args: str) -> Iterator[tuple[subprocess.Popen[str], LogLines]]:
    with kaffi_process("exporter", "--listen", "127.0.0.1:0", *args, cwd=REPO_ROOT) as running:
        yield running


@pytest.mark.slow
def test_kaffi_exporter_process(faktory_server: Any, kaffi_client: Client) -> None:
    kaffi_client.flush()
    kaffi_client.push({"jobtype": "x", "args": [], "queue": "exported"})
    with _exporter("--url", faktory_server.url, "--cache-seconds", "0") as (proc, reader):
        url = served_url(reader)
        samples = scrape(url)
        assert value(samples, "faktory_up") == 1
        assert value(samples, "faktory_queue_size", queue="exported") == 1
        kaffi_client.push({"jobtype": "x", "args": [], "queue": "exported"})
        wait_until(
            lambda: value(scrape(url), "faktory_queue_size", queue="exported") == 2,
            "the second job to show",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(WAIT) == 0


@pytest.mark.slow
def test_kaffi_exporter_keeps_serving_without_a_server() -> None:
    url_arg = f"tcp://127.0.0.1:{_closed_port()}"
    with _exporter("--url", url_arg) as (proc, reader):
        url = served_url(reader)
        for _ in range(2):
            assert [(s.name, s.value) for s in scrape(url)] == [("faktory_up", 0.0)]
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 0


def test_kaffi_exporter_bad_listen_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kaffi", "exporter", "--listen", "nowhere"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("kaffi: error: --listen must be HOST:PORT")
    assert len(result.stderr.strip().splitlines()) == 1
