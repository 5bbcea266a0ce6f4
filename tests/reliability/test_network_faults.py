"""Network faults: the server killed with -9 and restarted, a proxy cutting connections.

Producers push while a ``kaffi worker`` subprocess works. The rules: each push returned
a jid or raised a kaffi error; every returned jid ran at least once; nothing ran that
was never pushed; the worker reconnected by itself (the same process throughout); and
at the end nothing is left queued, reserved or waiting for a retry.

Jobs whose FETCH reply or ACK died with a connection stay reserved until their
reservation lapses (60 s, the minimum). The tests move the embedded server's clock
forward instead of waiting, then the worker picks those jobs up again.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

import kaffi
from kaffi.server import EmbeddedServer
from tests.reliability.load import Producers
from tests.reliability.proxy import FaultProxy
from tests.reliability.support import (
    Project,
    Tally,
    kaffi_process,
    server_args,
    sets_and_queues,
    wait_listening,
)
from tests.support import WAIT, embedded_server, free_port, wait_until

pytestmark = pytest.mark.reliability

RESERVATION_LAPSE = 61.0
FIRST_RETRY_DUE = 60.0


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project.create(tmp_path)


def _recover_lapsed(server: EmbeddedServer) -> None:
    """Reservations lost with a connection lapse, fail, and come back from the retry set."""
    server.advance_clock(RESERVATION_LAPSE)
    server.advance_clock(FIRST_RETRY_DUE)


def _settled(server: EmbeddedServer, must_run: set[str], project: Project) -> bool:
    sets, queues = sets_and_queues(server.info())
    idle = sets["working"] == 0 and sets["retries"] == 0 and not any(queues.values())
    return idle and must_run <= set(project.runs())


def _tally(producers: Producers, project: Project) -> Tally:
    tally = Tally()
    tally.pushed = producers.accepted
    tally.push_errors = sum(producers.errors.values())
    tally.record_runs(project.runs())
    return tally


def test_server_kill_9_and_restart_loses_no_acknowledged_push(
    project: Project, tmp_path: Path
) -> None:
    port = free_port()
    data = tmp_path / "kaffi.db"
    url = f"tcp://127.0.0.1:{port}"
    producers = Producers(url, quota=600, count=2)
    with kaffi_process(server_args(port, data), cwd=tmp_path, env=project.env(url)) as first:
        wait_listening(port, first)
        with kaffi_process(
            ["worker", "rel_app:app", "--concurrency", "10", "--timeout", "5"],
            cwd=project.root,
            env=project.env(url),
        ) as worker:
            try:
                producers.start()
                wait_until(
                    lambda: len(producers.accepted) >= 150 and len(project.runs()) >= 50,
                    lambda: (
                        f"load before the crash: accepted={len(producers.accepted)},"
                        f" runs={len(project.runs())}"
                    ),
                )
                first.signal(signal.SIGKILL)
                first.wait(WAIT)
                accepted_at_crash = len(producers.accepted)
                wait_until(
                    lambda: sum(producers.errors.values()) >= 2,
                    "pushes to fail while the server is down",
                )
                with kaffi_process(
                    server_args(port, data), cwd=tmp_path, env=project.env(url)
                ) as second:
                    wait_listening(port, second)
                    runs_at_restart = len(project.runs())
                    wait_until(
                        lambda: (
                            len(producers.accepted) >= accepted_at_crash + 150
                            and len(project.runs()) >= runs_at_restart + 100
                        ),
                        lambda: (
                            f"pushes and work after the restart: accepted="
                            f"{len(producers.accepted)}, runs={len(project.runs())}"
                        ),
                    )
                    producers.halt()
                    producers.join(WAIT)
                    assert worker.alive(), "the worker died:\n" + worker.log.text()[-2000:]
                    # A clean stop commits everything; the same data then opens in-process,
                    # where the clock can move.
                    second.signal(signal.SIGTERM)
                    code = second.wait(WAIT)
                    assert code == 0, f"the restarted server exited {code}"
                with embedded_server(bind=f"127.0.0.1:{port}", data=data) as server:
                    _recover_lapsed(server)
                    must_run = producers.accepted
                    wait_until(
                        lambda: _settled(server, must_run, project),
                        lambda: (
                            "every accepted push to run: "
                            + _tally(producers, project).figures(**server.info()["faktory"]["sets"])
                        ),
                    )
                    sets, queues = sets_and_queues(server.info())
                assert worker.alive(), "the worker died:\n" + worker.log.text()[-2000:]
            finally:
                producers.halt()
    tally = _tally(producers, project)
    figures = tally.figures(
        attempted=len(producers.attempted),
        errors=dict(producers.errors),
        accepted_at_crash=accepted_at_crash,
        runs_at_restart=runs_at_restart,
    )
    assert producers.outcomes == len(producers.attempted), (
        f"a push neither returned nor raised: {figures}"
    )
    assert tally.push_errors >= 2, f"no push met the dead server: {figures}"
    assert not tally.lost, f"acknowledged pushes never ran: {figures}"
    # A push that raised may still have reached the server; nothing else may run.
    assert set(tally.runs) <= producers.attempted, f"jobs ran that were never pushed: {figures}"
    assert sets["working"] == 0, figures
    assert sets["retries"] == 0, figures
    assert not any(queues.values()), figures


def test_a_proxy_dropping_connections_at_random_loses_nothing(project: Project) -> None:
    with (
        embedded_server() as server,
        FaultProxy("127.0.0.1", server.port, drop_probability=0.02, seed=7) as proxy,
    ):
        url = proxy.url()
        producers = Producers(url, quota=300, count=2)
        with kaffi_process(
            ["worker", "rel_app:app", "--concurrency", "10", "--timeout", "5"],
            cwd=project.root,
            env=project.env(url),
        ) as worker:
            try:
                producers.start()
                deadline = time.monotonic() + WAIT
                # Besides the per-chunk chance, cut a third of the live links now and then.
                while any(t.is_alive() for t in producers.threads):
                    assert time.monotonic() < deadline, "producers did not finish"
                    proxy.drop_random(0.3)
                    producers.stop.wait(0.2)
                producers.join(WAIT)
                drops = proxy.dropped
                # Heal the network, give lost reservations back, and let the worker finish.
                proxy.drop_probability = 0.0
                wait_until(
                    lambda: not any(sets_and_queues(server.info())[1].values()),
                    lambda: f"the queue to drain: {server.info()['faktory']}",
                )
                _recover_lapsed(server)
                must_run = producers.accepted
                wait_until(
                    lambda: _settled(server, must_run, project),
                    lambda: (
                        "every accepted push to run: "
                        + _tally(producers, project).figures(**server.info()["faktory"]["sets"])
                    ),
                )
                assert worker.alive(), "the worker died:\n" + worker.log.text()[-2000:]
            finally:
                producers.halt()
        sets, queues = sets_and_queues(server.info())
    tally = _tally(producers, project)
    figures = tally.figures(
        attempted=len(producers.attempted),
        errors=dict(producers.errors),
        connections=proxy.accepted,
        dropped=drops,
    )
    assert drops >= 20, f"the proxy hardly dropped anything: {figures}"
    assert producers.outcomes == len(producers.attempted), (
        f"a push neither returned nor raised: {figures}"
    )
    assert not tally.lost, f"acknowledged pushes never ran: {figures}"
    assert set(tally.runs) <= producers.attempted, f"jobs ran that were never pushed: {figures}"
    assert sets["working"] == 0, figures
    assert sets["retries"] == 0, figures
    assert not any(queues.values()), figures


def test_a_worker_cut_off_backs_off_then_reconnects_by_itself(project: Project) -> None:
    concurrency = 5
    with embedded_server() as server, FaultProxy("127.0.0.1", server.port) as proxy:
        url = proxy.url()
        with (
            kaffi.Client(server.url, timeout=10) as client,
            kaffi_process(
                ["worker", "rel_app:app", "--concurrency", str(concurrency), "--timeout", "2"],
                cwd=project.root,
                env=project.env(url),
            ) as worker,
        ):
            before = {client.push(_job(n)) for n in range(10)}
            wait_until(lambda: before <= set(project.runs()), "the first jobs to run")
            # Cut every link and refuse new ones: the worker must retry with backoff.
            proxy.refusing = True
            proxy.drop_all()
            start = proxy.accepted
            # A measurement window, not synchronisation: count attempts over a fixed time.
            window = 3.0
            threading.Event().wait(window)
            attempts = proxy.accepted - start
            proxy.refusing = False
            after = {client.push(_job(n)) for n in range(10)}
            wait_until(
                lambda: after <= set(project.runs()),
                lambda: f"jobs to run after the network came back ({attempts} attempts while cut)",
            )
            assert worker.alive(), "the worker died:\n" + worker.log.text()[-2000:]
    # Each of the slots and the heartbeat retries with a backoff doubling from 50 ms;
    # without one, 3 s of refusals would be thousands of attempts.
    assert attempts >= concurrency, f"only {attempts} reconnect attempts in {window:g}s"
    assert attempts <= 15 * (concurrency + 1), (
        f"{attempts} connection attempts in {window:g}s from {concurrency} slots: a storm"
    )


def _job(n: int) -> dict[str, object]:
    return {"jobtype": "work", "args": [n, 0.0], "reserve_for": 60}
