"""Faktory Enterprise's queue throttles in ``kaffi server --enterprise``: reading
``throttles.toml`` and every mistake in it, the locks in the core (taken at FETCH, released
at ACK, FAIL, reaping, a forgotten worker, or after ``timeout``), and the same over real
sockets: 20 fetchers at once, per-worker limits, blocked FETCHes woken by a release, the
``kaffi server --throttles`` command."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import CliRunner

from kaffi import App
from kaffi.cli import main
from kaffi.errors import ConfigurationError
from kaffi.server import EmbeddedServer
from kaffi.server.core import ServerCore, Waiter
from kaffi.server.jobs import parse_job
from kaffi.server.structures import Reservation
from kaffi.server.throttles import Throttle, Throttles, load_throttles
from tests.server.wire import Wire, push_line
from tests.support import (
    POLL,
    WAIT,
    embedded_server,
    kaffi_process,
    running,
    wait_until,
    waiting_fetches,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

GOOD_TOML = """\
# Enterprise's format: one key per queue.
[throttles]
default = { concurrency = 2, timeout = 60 }
"image-processing" = { worker = 1, timeout = 30 }

[throttles.reports]
concurrency = 5
timeout = 600
"""


class At(NamedTuple):
    """Where a server listens, as ``Wire.hello`` wants it."""

    host: str
    port: int


def write(tmp_path: Path, text: str, name: str = "throttles.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def core_with(throttles: dict[str, dict[str, int]]) -> ServerCore:
    limits = load_throttles({"throttles": throttles})
    return ServerCore(enterprise=True, throttles=Throttles(limits))


def push(core: ServerCore, jid: str, queue: str = "q", **fields: Any) -> None:
    core.push(
        parse_job(json.dumps({"jid": jid, "jobtype": "A", "args": [], "queue": queue, **fields}))
    )


def fetched(core: ServerCore, queues: str, wid: str = "w1") -> str | None:
    res = core.fetch(queues.split(), wid)
    return None if res is None else res.jid


def in_flight(info: dict[str, Any], queue: str) -> int:
    return int(info["faktory"]["throttles"][queue]["in_flight"])


# -- throttles.toml ------------------------------------------------------------------------


def test_a_file_in_enterprise_format_is_read(tmp_path: Path) -> None:
    throttles = load_throttles(write(tmp_path, GOOD_TOML))
    assert throttles == {
        "default": Throttle("default", 2, False, 60),
        "image-processing": Throttle("image-processing", 1, True, 30),
        "reports": Throttle("reports", 5, False, 600),
    }
    assert throttles["image-processing"].describe() == {"worker": 1, "timeout": 30}
    # The same document already parsed, and a path given as a string.
    assert load_throttles({"throttles": {"q": {"worker": 3, "timeout": 9}}}) == {
        "q": Throttle("q", 3, True, 9)
    }
    assert load_throttles(str(tmp_path / "throttles.toml")) == throttles
    assert load_throttles({"throttles": {}}) == {}


MISTAKES = [
    ({"throttles": {"q": {"concurrency": 2}}}, "queue 'q': timeout is missing"),
    (
        {"throttles": {"q": {"concurrency": 2, "worker": 1, "timeout": 5}}},
        "queue 'q': both concurrency and worker: give one, as in "
        "{ concurrency = N, timeout = SECONDS } or { worker = N, timeout = SECONDS }",
    ),
    ({"throttles": {"q": {"timeout": 5}}}, "queue 'q': neither concurrency nor worker"),
    (
        {"throttles": {"q": {"concurrency": 0, "timeout": 5}}},
        "queue 'q': concurrency must be a positive integer, got an integer 0",
    ),
    (
        {"throttles": {"q": {"worker": -1, "timeout": 5}}},
        "queue 'q': worker must be a positive integer, got an integer -1",
    ),
    (
        {"throttles": {"q": {"concurrency": 1, "timeout": 0}}},
        "queue 'q': timeout must be a positive integer, got an integer 0",
    ),
    (
        {"throttles": {"q": {"concurrency": 1.5, "timeout": 5}}},
        "queue 'q': concurrency must be a positive integer, got a float 1.5",
    ),
    (
        {"throttles": {"q": {"concurrency": True, "timeout": 5}}},
        "queue 'q': concurrency must be a positive integer, got a boolean true",
    ),
    (
        {"throttles": {"q": {"concurrency": 1, "timeout": "60"}}},
        "queue 'q': timeout must be a positive integer, got a string \"60\"",
    ),
    (
        {"throttles": {"q": {"concurrency": 1, "timeout": 5, "rate": 3}}},
        "queue 'q': unknown key 'rate' (a throttle has concurrency or worker, and timeout)",
    ),
    ({"throttles": {"q": 3}}, "queue 'q': must be a table like { concurrency = N"),
    ({"throttles": {"a b": {"concurrency": 1, "timeout": 5}}}, "queue 'a b': not a queue name"),
    ({"throttles": [1]}, "[throttles] must be a table of queues, got an array"),
    ({}, "no [throttles] table"),
    (
        {"throttles": {}, "cron": [{"schedule": "* * * * *"}]},
        "unknown top-level key 'cron': kaffi server reads only [throttles]",
    ),
]


@pytest.mark.parametrize(("document", "message"), MISTAKES)
def test_every_mistake_is_one_line_naming_the_queue_and_key(
    document: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_throttles(document)
    text = str(caught.value)
    assert text.startswith(f"throttles: {message}"), text
    assert "\n" not in text


def test_file_mistakes_name_the_file(tmp_path: Path) -> None:
    cases = {
        "missing.toml": None,
        "bad-syntax.toml": "[throttles\n",
        "no-timeout.toml": "[throttles]\nq = { concurrency = 2 }\n",
        "both.toml": '[throttles]\n"img" = { concurrency = 2, worker = 1, timeout = 9 }\n',
        "latin1.toml": '[throttles]\n"caf\xe9" = 1\n',
    }
    expected = {
        "missing.toml": "cannot read throttles file {path}: No such file or directory",
        "bad-syntax.toml": "throttles file {path}: not valid TOML: ",
        "no-timeout.toml": "throttles file {path}: queue 'q': timeout is missing",
        "both.toml": "throttles file {path}: queue 'img': both concurrency and worker",
        "latin1.toml": "throttles file {path}: not valid TOML: not UTF-8 text (invalid",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_bytes(text.encode("latin-1"))
        with pytest.raises(ConfigurationError) as caught:
            load_throttles(path)
        assert str(caught.value).startswith(expected[name].format(path=path)), caught.value
        assert "\n" not in str(caught.value)


def test_throttles_without_enterprise_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="throttles are a Faktory Enterprise feature"):
        EmbeddedServer(throttles={"throttles": {"q": {"concurrency": 1, "timeout": 5}}})
    with pytest.raises(ConfigurationError, match="queue 'q': timeout is missing"):
        EmbeddedServer(enterprise=True, throttles={"throttles": {"q": {"concurrency": 1}}})


# -- the core ------------------------------------------------------------------------------


def test_concurrency_limit_makes_the_queue_look_empty_and_other_queues_are_served() -> None:
    core = core_with({"q": {"concurrency": 2, "timeout": 60}})
    for n in range(4):
        push(core, f"q-job-{n:04d}")
    push(core, "other-job", queue="other")
    assert fetched(core, "q", "w1") == "q-job-0000"
    assert fetched(core, "q", "w2") == "q-job-0001"
    assert fetched(core, "q", "w3") is None
    # At the limit, q is skipped as if empty and the next queue named is served.
    assert fetched(core, "q other", "w3") == "other-job"
    assert len(core.queues["q"].jobs) == 2
    core.ack("q-job-0000")
    assert fetched(core, "other q", "w3") == "q-job-0002"
    core.fail("q-job-0001", "E", "boom", None)
    assert fetched(core, "q", "w4") == "q-job-0003"
    assert core.throttles is not None
    assert core.throttles.info(core.clock.now()) == {
        "q": {"concurrency": 2, "timeout": 60, "in_flight": 2}
    }


def test_worker_limit_counts_per_wid() -> None:
    core = core_with({"q": {"worker": 2, "timeout": 60}})
    for n in range(6):
        push(core, f"job-{n:04d}")
    assert [fetched(core, "q", "A") for _ in range(3)] == ["job-0000", "job-0001", None]
    assert [fetched(core, "q", "B") for _ in range(3)] == ["job-0002", "job-0003", None]
    assert core.throttles is not None
    info = core.throttles.info(core.clock.now())["q"]
    assert info == {"worker": 2, "timeout": 60, "in_flight": 4, "by_worker": {"A": 2, "B": 2}}
    core.ack("job-0002")
    assert fetched(core, "q", "A") is None
    assert fetched(core, "q", "B") == "job-0004"


def test_a_lock_lapses_after_its_timeout_even_if_the_job_still_runs() -> None:
    core = core_with({"q": {"concurrency": 1, "timeout": 30}})
    for n in range(3):
        push(core, f"job-{n:04d}")
    assert fetched(core, "q") == "job-0000"
    core.clock.advance(29)
    core.tick()
    assert fetched(core, "q") is None
    core.clock.advance(1)
    # Lapsed: the next FETCH is served without waiting for a tick.
    assert fetched(core, "q") == "job-0001"
    assert set(core.reservations) == {"job-0000", "job-0001"}
    # job-0's late ACK frees nothing: job-1 holds the only slot.
    core.ack("job-0000")
    assert fetched(core, "q") is None


def test_a_reaped_reservation_and_a_forgotten_worker_release_their_locks() -> None:
    core = core_with({"q": {"concurrency": 1, "timeout": 3600}})
    for n in range(3):
        push(core, f"job-{n:04d}", reserve_for=60)
    assert fetched(core, "q") == "job-0000"
    core.clock.advance(61)
    core.tick()  # job-0's reservation expires: it is failed, its slot is free
    assert not core.reservations
    assert fetched(core, "q", "w-dies") == "job-0001"
    core.register("w-dies", "host", 1, [], conn_id=7)
    core.unregister("w-dies", 7)  # its last connection closed
    assert fetched(core, "q", "w2") == "job-0002"
    core.register("w-silent", "host", 1, [], conn_id=8)
    core.ack("job-0002")
    push(core, "job-0003", reserve_for=3000)
    assert fetched(core, "q", "w-silent") == "job-0003"
    push(core, "job-0004")
    core.clock.advance(61)
    assert core.tick() == [8]  # no BEAT for 60 s: the worker and its slot are forgotten
    assert fetched(core, "q", "w2") == "job-0004"


class Blocked:
    """A FETCH parked in the core, as the network layer parks one."""

    def __init__(self, core: ServerCore, queues: str, wid: str) -> None:
        self.got: list[Reservation] = []
        self.waiter = Waiter(queues.split(), wid, self.got.append, lambda: True)
        core.add_waiter(self.waiter)

    def jid(self) -> str | None:
        return self.got[0].jid if self.got else None


def test_a_blocked_fetch_is_woken_by_ack_fail_expiry_and_push() -> None:
    core = core_with({"q": {"concurrency": 1, "timeout": 30}})
    for n in range(4):
        push(core, f"job-{n:04d}", retry=0)
    assert fetched(core, "q") == "job-0000"
    first = Blocked(core, "empty q", "w2")
    assert first.jid() is None
    core.ack("job-0000")
    assert first.jid() == "job-0001"
    second = Blocked(core, "q", "w3")
    core.fail("job-0001", "E", "boom", None)
    assert second.jid() == "job-0002"
    third = Blocked(core, "q", "w4")
    core.clock.advance(30)
    core.tick()
    assert third.jid() == "job-0003"
    # A job pushed while there is room goes to the FETCH waiting for it at once.
    fourth = Blocked(core, "q", "w5")
    core.ack("job-0003")
    core.ack("job-0002")
    assert fourth.jid() is None
    push(core, "job-0004")
    assert fourth.jid() == "job-0004"
    assert not core.queues["q"].jobs


def test_a_blocked_fetch_the_worker_limit_refuses_stays_blocked() -> None:
    core = core_with({"q": {"worker": 1, "timeout": 30}})
    push(core, "job-0000")
    assert fetched(core, "q", "A") == "job-0000"
    a = Blocked(core, "q", "A")
    b = Blocked(core, "q", "B")
    push(core, "job-0001")
    # A is at its limit: the job goes to B, who asked later.
    assert (a.jid(), b.jid()) == (None, "job-0001")
    push(core, "job-0002")
    assert a.jid() is None
    core.ack("job-0000")
    assert a.jid() == "job-0002"


def test_flush_and_a_returned_job_free_their_slots() -> None:
    core = core_with({"q": {"concurrency": 1, "timeout": 30}})
    push(core, "job-0000")
    res = core.fetch(["q"], "w1")
    assert res is not None
    core.return_to_front(res)  # its connection went away before the job was sent
    assert fetched(core, "q") == "job-0000"
    core.flush()
    push(core, "job-0001")
    assert fetched(core, "q") == "job-0001"


def test_unthrottled_queues_and_info_without_throttles_are_unchanged() -> None:
    core = core_with({"q": {"concurrency": 1, "timeout": 30}})
    for n in range(3):
        push(core, f"free-{n:04d}", queue="free")
    assert [fetched(core, "free") for _ in range(3)] == ["free-0000", "free-0001", "free-0002"]
    assert "throttles" in core.info()["faktory"]
    assert "throttles" not in ServerCore(enterprise=True).info()["faktory"]
    assert "throttles" not in ServerCore().info()["faktory"]


# -- over sockets --------------------------------------------------------------------------

LIMIT = 3
JOBS = 24
FETCHERS = 20


def test_concurrency_holds_under_20_parallel_fetchers() -> None:
    """20 connections FETCH at once; the test releases one job at a time (ACK and FAIL in
    turn) and checks at every step that exactly LIMIT jobs are in flight, as the fetchers
    see it and as INFO says."""
    throttles = {"throttles": {"q": {"concurrency": LIMIT, "timeout": 600}}}
    with embedded_server(enterprise=True, throttles=throttles, fetch_hold=0.5) as srv:
        producer = Wire.hello(srv)
        for n in range(JOBS):
            assert producer.send(push_line(jid=f"job-{n:04d}", queue="q", retry=0)) == ["+OK"]
        guard = threading.Lock()
        held: dict[str, threading.Event] = {}
        fetched_jids: list[str] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def fetcher(n: int) -> None:
            try:
                conn = Wire.hello(srv, f"fetcher-{n:02d}")
                try:
                    while not stop.is_set():
                        reply = conn.send("FETCH q")
                        if reply == ["$-1"]:
                            continue
                        jid = json.loads(reply[1])["jid"]
                        release = threading.Event()
                        with guard:
                            held[jid] = release
                            fetched_jids.append(jid)
                            assert len(held) <= LIMIT, f"{len(held)} jobs in flight"
                        assert release.wait(WAIT), f"{jid} was never released"
                        # Out of the count before the server hears of it, never after.
                        with guard:
                            del held[jid]
                        if int(jid[-4:]) % 2:
                            fail = {"jid": jid, "errtype": "E", "message": "boom"}
                            assert conn.send("FAIL " + json.dumps(fail)) == ["+OK"]
                        else:
                            assert conn.send(f'ACK {{"jid":"{jid}"}}') == ["+OK"]
                finally:
                    conn.close()
            except BaseException as exc:  # handed to the test thread
                errors.append(exc)

        threads = [threading.Thread(target=fetcher, args=(n,), daemon=True) for n in range(20)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: len(srv.workers()) == FETCHERS, "20 fetchers connected")
            for step in range(JOBS):
                expected = min(LIMIT, JOBS - step)

                def settled(expected: int = expected) -> bool:
                    with guard:
                        return len(held) == expected or bool(errors)

                wait_until(settled, f"{expected} jobs in flight at step {step}")
                assert not errors, errors
                with guard:
                    now_held = dict(held)
                    seen = len(fetched_jids)
                assert len(now_held) == expected
                assert seen == step + expected
                faktory = srv.info()["faktory"]
                assert faktory["throttles"]["q"]["in_flight"] == expected
                assert faktory["sets"]["working"] == expected
                assert faktory["queues"]["q"] == JOBS - seen
                jid, release = next(iter(now_held.items()))
                release.set()

                def gone(jid: str = jid) -> bool:
                    with guard:
                        return jid not in held

                wait_until(gone, f"{jid} to be released")
            wait_until(lambda: srv.info()["faktory"]["total_processed"] == JOBS, "the last ACK")
        finally:
            # Jobs may still reach fetchers while they stop: release those too.
            stop.set()
            deadline = time.monotonic() + WAIT
            while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                with guard:
                    for release in held.values():
                        release.set()
                for thread in threads:
                    thread.join(POLL)
            producer.close()
        assert not errors, errors
        assert not any(thread.is_alive() for thread in threads)
        assert sorted(fetched_jids) == [f"job-{n:04d}" for n in range(JOBS)]
        faktory = srv.info()["faktory"]
        assert faktory["total_failures"] == JOBS // 2
        assert faktory["throttles"]["q"]["in_flight"] == 0


@pytest.fixture
def faktory_throttles() -> dict[str, Any]:
    """The throttles of this module's ``faktory_enterprise_server`` (the fixture option)."""
    return {
        "throttles": {
            "one": {"concurrency": 1, "timeout": 30},
            "per-worker": {"worker": 2, "timeout": 600},
        }
    }


@pytest.fixture
def wires(faktory_enterprise_server: EmbeddedServer) -> Iterator[Callable[..., Wire]]:
    """``wires(wid=None, server=...)``: raw connections, closed after the test."""
    opened: list[Wire] = []

    def connect(wid: str | None = None, server: EmbeddedServer | None = None) -> Wire:
        conn = Wire.hello(server or faktory_enterprise_server, wid)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def test_fixture_option_throttles_the_enterprise_server(
    faktory_enterprise_server: EmbeddedServer, wires: Callable[..., Wire]
) -> None:
    srv = faktory_enterprise_server
    producer = wires()
    for n in range(2):
        assert producer.send(push_line(jid=f"one-{n:04d}", queue="one")) == ["+OK"]
    assert producer.send(push_line(jid="other-0001", queue="other")) == ["+OK"]
    w1, w2 = wires("w1"), wires("w2")
    assert json.loads(w1.send("FETCH one")[1])["jid"] == "one-0000"
    assert w2.send("FETCH one") == ["$-1"]
    assert json.loads(w2.send("FETCH one other")[1])["jid"] == "other-0001"
    throttles = srv.info()["faktory"]["throttles"]
    assert throttles["one"] == {"concurrency": 1, "timeout": 30, "in_flight": 1}
    assert throttles["per-worker"] == {
        "worker": 2,
        "timeout": 600,
        "in_flight": 0,
        "by_worker": {},
    }


def test_worker_limit_per_wid_over_several_connections(
    faktory_enterprise_server: EmbeddedServer, wires: Callable[..., Wire]
) -> None:
    srv = faktory_enterprise_server
    producer = wires()
    for n in range(6):
        assert producer.send(push_line(jid=f"pwjob-{n:04d}", queue="per-worker")) == ["+OK"]
    a1, a2, a3, b1 = wires("A"), wires("A"), wires("A"), wires("B")
    assert json.loads(a1.send("FETCH per-worker")[1])["jid"] == "pwjob-0000"
    assert json.loads(a2.send("FETCH per-worker")[1])["jid"] == "pwjob-0001"
    assert a3.send("FETCH per-worker") == ["$-1"]
    assert json.loads(b1.send("FETCH per-worker")[1])["jid"] == "pwjob-0002"
    assert json.loads(b1.send("FETCH per-worker")[1])["jid"] == "pwjob-0003"
    assert b1.send("FETCH per-worker") == ["$-1"]
    by_worker = srv.info()["faktory"]["throttles"]["per-worker"]["by_worker"]
    assert by_worker == {"A": 2, "B": 2}
    assert a1.send('ACK {"jid":"pwjob-0000"}') == ["+OK"]
    assert json.loads(a3.send("FETCH per-worker")[1])["jid"] == "pwjob-0004"


def test_a_kaffi_worker_runs_at_most_the_limit_at_once(
    faktory_enterprise_server: EmbeddedServer,
) -> None:
    """A real worker with 6 job slots, on a queue throttled to 2 per worker process."""
    app = App(faktory_enterprise_server.url)
    guard = threading.Lock()
    running_now: list[int] = []
    most = [0]
    gate = threading.Event()

    @app.task(queue="per-worker")
    def resize(n: int) -> None:
        with guard:
            running_now.append(n)
            most[0] = max(most[0], len(running_now))
        assert gate.wait(WAIT), "the test never opened the gate"
        with guard:
            running_now.remove(n)

    try:
        for n in range(6):
            resize.delay(n)
        with running(app.worker(concurrency=6, queues=["per-worker"])):
            wait_until(lambda: len(running_now) == 2, "two jobs running")
            faktory = faktory_enterprise_server.info()["faktory"]
            assert faktory["throttles"]["per-worker"]["in_flight"] == 2
            assert faktory["queues"]["per-worker"] == 4
            gate.set()
            wait_until(
                lambda: faktory_enterprise_server.info()["faktory"]["total_processed"] == 6,
                "all six jobs done",
            )
    finally:
        gate.set()
        app.close()
    assert most[0] == 2


@pytest.fixture
def patient() -> Iterator[EmbeddedServer]:
    """A throttled server whose FETCH waits 30 s, so a wake-up cannot be mistaken for
    the end of the hold."""
    throttles = {"throttles": {"q": {"concurrency": 1, "timeout": 30}}}
    with embedded_server(enterprise=True, throttles=throttles, fetch_hold=30.0) as srv:
        yield srv


def held_and_waiting(
    patient: EmbeddedServer, wires: Callable[..., Wire], fetch: bytes
) -> tuple[Wire, Wire]:
    """Two jobs in "q": worker w1 holds the first (the throttle's one slot), and w2's
    ``fetch`` line is blocked on the server."""
    producer, holder, waiting = wires(server=patient), wires("w1", patient), wires("w2", patient)
    for n in range(2):
        assert producer.send(push_line(jid=f"job-{n:04d}", queue="q")) == ["+OK"]
    assert json.loads(holder.send("FETCH q")[1])["jid"] == "job-0000"
    waiting.write(fetch)
    wait_until(lambda: waiting_fetches(patient) == 1, "the second FETCH to block")
    return holder, waiting


def test_a_waiting_fetch_is_woken_by_an_ack(
    patient: EmbeddedServer, wires: Callable[..., Wire]
) -> None:
    holder, waiting = held_and_waiting(patient, wires, b"FETCH other q\r\n")
    assert holder.send('ACK {"jid":"job-0000"}') == ["+OK"]
    assert json.loads(waiting.reply()[1])["jid"] == "job-0001"
    assert in_flight(patient.info(), "q") == 1


def test_a_waiting_fetch_is_woken_when_the_lock_times_out(
    patient: EmbeddedServer, wires: Callable[..., Wire]
) -> None:
    _, waiting = held_and_waiting(patient, wires, b"FETCH q\r\n")
    patient.advance_clock(29)
    assert waiting_fetches(patient) == 1
    patient.advance_clock(1)
    assert json.loads(waiting.reply()[1])["jid"] == "job-0001"
    # job-0000 still runs (reserved for 30 minutes); only its throttle lock lapsed.
    assert patient.info()["faktory"]["sets"]["working"] == 2


def test_a_worker_that_disconnects_frees_its_slots(
    faktory_enterprise_server: EmbeddedServer, wires: Callable[..., Wire]
) -> None:
    srv = faktory_enterprise_server
    producer = wires()
    for n in range(2):
        assert producer.send(push_line(jid=f"one-{n:04d}", queue="one")) == ["+OK"]
    crashing = Wire.hello(srv, "w-crash")
    assert json.loads(crashing.send("FETCH one")[1])["jid"] == "one-0000"
    other = wires("w-other")
    assert other.send("FETCH one") == ["$-1"]
    crashing.close()
    wait_until(lambda: in_flight(srv.info(), "one") == 0, "the crashed worker's slot freed")
    assert json.loads(other.send("FETCH one")[1])["jid"] == "one-0001"


def test_locks_of_reserved_jobs_come_back_after_a_restart(tmp_path: Path) -> None:
    throttles = {"throttles": {"q": {"concurrency": 1, "timeout": 300}}}
    data = tmp_path / "kaffi.sqlite3"
    with embedded_server(data=data, enterprise=True, throttles=throttles) as srv:
        conn = Wire.hello(srv, "w1")
        for n in range(2):
            assert conn.send(push_line(jid=f"job-{n:04d}", queue="q")) == ["+OK"]
        assert json.loads(conn.send("FETCH q")[1])["jid"] == "job-0000"
        conn.close()
    with embedded_server(data=data, enterprise=True, throttles=throttles) as srv:
        assert in_flight(srv.info(), "q") == 1
        conn = Wire.hello(srv, "w1")
        try:
            assert conn.send("FETCH q") == ["$-1"]
            assert conn.send('ACK {"jid":"job-0000"}') == ["+OK"]
            assert json.loads(conn.send("FETCH q")[1])["jid"] == "job-0001"
        finally:
            conn.close()


# -- kaffi server --------------------------------------------------------------------------


def test_kaffi_server_throttles_file_starts_and_enforces(tmp_path: Path) -> None:
    path = write(tmp_path, "[throttles]\nq = { concurrency = 1, timeout = 60 }\n")
    args = ("server", "--bind", "127.0.0.1:0", "--memory", "--no-web", "--log-level", "debug")
    with kaffi_process(
        *args, "--fetch-hold", "0.05", "--enterprise", "--throttles", str(path), cwd=REPO_ROOT
    ) as (proc, log):
        line = log.wait_for("kaffi server listening on ")[0]
        host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
        server = Wire.hello(At(host, int(port)), "w1")
        try:
            for n in range(2):
                assert server.send(push_line(jid=f"job-{n:04d}", queue="q")) == ["+OK"]
            assert json.loads(server.send("FETCH q")[1])["jid"] == "job-0000"
            assert server.send("FETCH q") == ["$-1"]
            info = json.loads(server.send("INFO")[1])
            assert info["faktory"]["throttles"]["q"]["in_flight"] == 1
            assert server.send('ACK {"jid":"job-0000"}') == ["+OK"]
            assert json.loads(server.send("FETCH q")[1])["jid"] == "job-0001"
        finally:
            server.close()
        assert proc.poll() is None


def test_kaffi_server_with_a_bad_file_exits_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[throttles]\nq = { concurrency = 1 }\n")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "kaffi", "server", "--bind", "127.0.0.1:0", "--memory"),
            *("--no-web", "--enterprise", "--throttles", str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"kaffi: error: throttles file {path}: queue 'q': timeout is missing: "
        "seconds a lock lives before it lapses (required)"
    ]


def test_kaffi_server_refusals_are_one_line(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD_TOML)
    runner = CliRunner()
    base = ["server", "--bind", "127.0.0.1:0", "--memory", "--no-web"]
    result = runner.invoke(main, [*base, "--throttles", str(good)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "kaffi: error: --throttles is given but --enterprise is not: "
        "queue throttles are a Faktory Enterprise feature"
    )
    result = runner.invoke(main, base, env={"KAFFI_THROTTLES": str(good)})
    assert result.exit_code == 1
    assert result.output.strip().startswith("kaffi: error: KAFFI_THROTTLES is set but")
    bad_files = {
        "nothing.toml": None,
        "syntax.toml": "[throttles]\nq = {\n",
        "neither.toml": "[throttles]\nq = { timeout = 3 }\n",
        "zero.toml": "[throttles]\nq = { worker = 0, timeout = 3 }\n",
        "key.toml": "[throttles]\nq = { worker = 1, timeout = 3, burst = 2 }\n",
        "cron.toml": '[[cron]]\nschedule = "* * * * *"\n',
    }
    for name, text in bad_files.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        for how in ("option", "env"):
            args = [*base, "--enterprise"]
            env = {"KAFFI_THROTTLES": str(path)} if how == "env" else None
            if how == "option":
                args += ["--throttles", str(path)]
            result = runner.invoke(main, args, env=env)
            assert result.exit_code == 1, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1, result.output
            assert lines[0].startswith("kaffi: error: "), lines
            assert str(path) in lines[0]
            assert "Traceback" not in result.output
