"""Durability with ``--data``: every +OK'd job survives ``kill -9``; state comes back."""

from __future__ import annotations

import datetime
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kaffi.errors import ConfigurationError
from kaffi.server import EmbeddedServer
from kaffi.server.core import ServerCore
from kaffi.server.storage import SqliteJournal
from tests.server.wire import Closed, Wire, push_line
from tests.support import embedded_server

_LISTENING = re.compile(r"listening on tcp://([\d.]+):(\d+)")


class ServerProcess:
    """``python -m kaffi server --data PATH`` in a child process."""

    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kaffi",
                "server",
                "--bind",
                "127.0.0.1:0",
                "--data",
                str(data),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        match = _LISTENING.search(line)
        if match is None:
            self.kill()
            raise AssertionError(f"server did not start: {line!r}")
        self.host, self.port = match.group(1), int(match.group(2))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[[], ServerProcess]]:
    started: list[ServerProcess] = []

    def start() -> ServerProcess:
        proc = ServerProcess(tmp_path / "kaffi.sqlite3")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def test_state_survives_kill_9(
    server_process: Callable[[], ServerProcess], wire: Callable[..., Wire]
) -> None:
    first = server_process()
    w = wire("w-1", server=first)
    for n in range(5):
        assert w.send(push_line(jid=f"jid-queued-{n:03d}", queue="q")) == ["+OK"]
    assert w.send(push_line(jid="jid-reserved-01", queue="r", reserve_for=600)) == ["+OK"]
    assert w.send("FETCH r")[0].startswith("$")
    assert w.send(push_line(jid="jid-retry-0001", queue="f", retry=5)) == ["+OK"]
    w.send("FETCH f")
    assert w.send('FAIL {"jid":"jid-retry-0001","errtype":"E","message":"m"}') == ["+OK"]
    assert w.send(push_line(jid="jid-dead-00001", queue="f", retry=-1)) == ["+OK"]
    w.send("FETCH f")
    assert w.send('FAIL {"jid":"jid-dead-00001","errtype":"E","message":"m"}') == ["+OK"]
    assert w.send(push_line(jid="jid-sched-0001", at="2099-01-01T00:00:00Z")) == ["+OK"]
    assert w.send("QUEUE PAUSE q") == ["+OK"]
    assert w.send("FETCH q") == ["$-1"]
    first.kill()

    second = server_process()
    w2 = wire("w-2", server=second)
    info = w2.value("INFO")["faktory"]
    assert info["queues"] == {"f": 0, "q": 5, "r": 0}
    assert info["sets"] == {"dead": 1, "retries": 1, "scheduled": 1, "working": 1}
    assert w2.send("FETCH q") == ["$-1"]  # still paused
    w2.send("QUEUE RESUME q")
    jids = [json.loads(w2.send("FETCH q")[1])["jid"] for _ in range(5)]
    assert jids == [f"jid-queued-{n:03d}" for n in range(5)]  # order kept
    assert w2.send('ACK {"jid":"jid-reserved-01"}') == ["+OK"]
    assert w2.value("INFO")["faktory"]["sets"]["working"] == 5


def test_every_acknowledged_push_survives_kill_9_under_load(
    server_process: Callable[[], ServerProcess], wire: Callable[..., Wire]
) -> None:
    first = server_process()
    acked: list[str] = []
    producer = wire(server=first)
    enough = threading.Event()

    def push_forever() -> None:
        n = 0
        try:
            while True:
                batch = [f"jid-load-{n + i:08d}" for i in range(50)]
                producer.write(b"".join(push_line(jid=j).encode() + b"\r\n" for j in batch))
                for jid in batch:
                    if producer.reply() == ["+OK"]:
                        acked.append(jid)
                n += 50
                if n >= 500:
                    enough.set()
        except (Closed, OSError):
            enough.set()

    thread = threading.Thread(target=push_forever, daemon=True)
    thread.start()
    assert enough.wait(30), "the producer made no progress"
    first.kill()
    thread.join(30)
    assert not thread.is_alive()
    assert len(acked) >= 500

    second = server_process()
    w = wire(server=second)
    stored = w.value("INFO")["faktory"]["queues"]["default"]
    consumer = wire("w-drain", server=second)
    found = set()
    for _ in range(stored):
        found.add(json.loads(consumer.send("FETCH default")[1])["jid"])
    missing = set(acked) - found
    assert not missing, f"pushed {len(acked)}, stored {stored}, lost {len(missing)}"


def test_embedded_restart_keeps_jobs(tmp_path: Path, wire: Callable[..., Wire]) -> None:
    data = tmp_path / "jobs.sqlite3"
    with embedded_server(data=data) as srv:
        w = wire(server=srv)
        w.send(push_line(jid="jid-keep-00001", queue="keep", custom={"a": [1, 2]}))
        w.send(push_line(jid="jid-gone-00001", queue="keep"))
        w.send("FETCH keep")
        w.send('ACK {"jid":"jid-keep-00001"}')
        w.send("FLUSH")
        w.send(push_line(jid="jid-after-flush", queue="keep"))
    with embedded_server(data=data) as srv:
        w = wire(server=srv)
        assert json.loads(w.send("FETCH keep")[1])["jid"] == "jid-after-flush"
        assert w.send("FETCH keep") == ["$-1"]


def test_processed_and_failed_totals_survive_a_restart(
    tmp_path: Path, wire: Callable[..., Wire]
) -> None:
    data = tmp_path / "totals.sqlite3"
    with EmbeddedServer(data=data) as srv:
        w = wire(server=srv)
        for n in range(3):
            w.send(push_line(jid=f"jid-total-0000{n}", queue="t", retry=0))
            w.send("FETCH t")
        w.send('ACK {"jid":"jid-total-00000"}')
        w.send('ACK {"jid":"jid-total-00001"}')
        w.send('FAIL {"jid":"jid-total-00002","errtype":"E","message":"m"}')
        before = srv.info()["faktory"]
        assert (before["total_processed"], before["total_failures"]) == (3, 1)
    with EmbeddedServer(data=data) as srv:
        after = srv.info()["faktory"]
        assert (after["total_processed"], after["total_failures"]) == (3, 1)
        w = wire(server=srv)
        w.send("FLUSH")  # FLUSH zeroes them, as Faktory's FLUSHDB does, for good too
    with EmbeddedServer(data=data) as srv:
        again = srv.info()["faktory"]
        assert (again["total_processed"], again["total_failures"]) == (0, 0)


def test_flush_unpauses_queues_for_good(tmp_path: Path, wire: Callable[..., Wire]) -> None:
    data = tmp_path / "paused.sqlite3"
    with EmbeddedServer(data=data) as srv:
        w = wire(server=srv)
        w.send(push_line(jid="jid-held-00001", queue="held"))
        w.send("QUEUE PAUSE held")
        w.send("FLUSH")
        w.send(push_line(jid="jid-held-00002", queue="held"))
    # The un-pause was written down too: after a restart the queue still serves.
    with EmbeddedServer(data=data) as srv:
        w = wire(server=srv)
        assert json.loads(w.send("FETCH held")[1])["jid"] == "jid-held-00002"


def test_one_server_per_data_file(tmp_path: Path) -> None:
    data = tmp_path / "shared.sqlite3"
    with embedded_server(data=data):
        second = embedded_server(data=data)
        with pytest.raises(ConfigurationError, match="locked"):
            second.start()
    with embedded_server(data=data) as again:
        assert again.running


def _push_and_fetch(core: ServerCore, jid: str) -> None:
    core.push({"jid": jid, "jobtype": "t", "args": [], "queue": "default", "retry": 1})
    assert core.fetch(["default"], "wid-1") is not None


def test_daily_counters_are_kept_per_utc_day(tmp_path: Path) -> None:
    data = tmp_path / "daily.sqlite3"
    journal = SqliteJournal(data)
    core = ServerCore(journal=journal)
    journal.load(core)
    # Start the clock at the beginning of a known UTC day.
    day_one = datetime.datetime(2030, 1, 1, 0, 0, 10, tzinfo=datetime.timezone.utc).timestamp()
    core.clock.advance(day_one - core.clock.now())
    for n in range(3):
        _push_and_fetch(core, f"jid-ok-{n:06d}")
        core.ack(f"jid-ok-{n:06d}")
    _push_and_fetch(core, "jid-failing-01")
    core.fail("jid-failing-01", "Boom", "it broke", None)
    journal.commit()
    core.clock.advance(86400.0)
    _push_and_fetch(core, "jid-next-day-1")
    core.ack("jid-next-day-1")
    core.flush()  # zeroes the core's counters; the days already written stay
    _push_and_fetch(core, "jid-next-day-2")
    core.fail("jid-next-day-2", "Boom", "again", None)
    journal.close()

    reopened = SqliteJournal(data)
    try:
        history = reopened.daily(3, day_one + 86400.0)
    finally:
        reopened.close()
    assert history == [("2029-12-31", 0, 0), ("2030-01-01", 4, 1), ("2030-01-02", 2, 1)]
    other = SqliteJournal(tmp_path / "other.sqlite3")
    try:
        with pytest.raises(ValueError, match="at least 1"):
            other.daily(0, day_one)
    finally:
        other.close()
