"""``kaffi beat`` and ``kaffi worker --beat`` as real processes on the embedded server."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.periodic.procs import Proc, read_runs, write_app
from tests.support import wait_until


@pytest.fixture
def app_path(tmp_path: Path) -> str:
    return write_app(tmp_path)


def env_for(server: Any, tmp_path: Path) -> dict[str, str]:
    return {"FAKTORY_URL": server.url, "TICK_LOG": str(tmp_path / "runs.log"), "TICK_EVERY": "1"}


def test_list_prints_five_occurrences_in_the_zone_and_in_utc(app_path: str, tmp_path: Path) -> None:
    proc = Proc(
        "beat",
        app_path,
        "--list",
        "--from",
        "2026-03-28T12:00:00Z",
        cwd=tmp_path,
        env={"TICK_EVERY": "1"},
    )
    assert proc.wait() == 0, proc.output
    lines = proc.lines
    assert lines[0] == "tick: tick, every 1 s, queue default"
    assert lines[1:6] == [
        f"  2026-03-28 12:00:0{s} UTC (+0000)   2026-03-28T12:00:0{s}Z" for s in range(1, 6)
    ]
    assert lines[6] == "nightly: tick, cron '30 2 * * *' in Europe/Berlin, queue default"
    # The night the clocks go forward, 02:30 does not exist: 03:00 CEST is 01:00 UTC.
    assert lines[7:12] == [
        "  2026-03-29 03:00:00 CEST (+0200)   2026-03-29T01:00:00Z",
        "  2026-03-30 02:30:00 CEST (+0200)   2026-03-30T00:30:00Z",
        "  2026-03-31 02:30:00 CEST (+0200)   2026-03-31T00:30:00Z",
        "  2026-04-01 02:30:00 CEST (+0200)   2026-04-01T00:30:00Z",
        "  2026-04-02 02:30:00 CEST (+0200)   2026-04-02T00:30:00Z",
    ]
    assert len(lines) == 12


def test_list_from_now_and_bad_input_is_one_line(app_path: str, tmp_path: Path) -> None:
    listed = Proc("beat", app_path, "--list", cwd=tmp_path, env={})
    assert listed.wait() == 0, listed.output
    assert len([line for line in listed.lines if re.match(r"  \d{4}-", line)]) == 10
    for args, message in [
        (("--list", "--from", "yesterday"), "is not an RFC 3339 instant"),
        # The protocol's parser: an offset is required, a lowercase z refused (as Go).
        (("--list", "--from", "2026-01-01T00:00:00"), "with a UTC offset or Z"),
        (("--list", "--from", "2026-01-01T00:00:00z"), "is not an RFC 3339 instant"),
        (("--from", "2026-01-01T00:00:00Z"), "--from goes with --list"),
    ]:
        proc = Proc("beat", app_path, *args, cwd=tmp_path, env={})
        assert proc.wait() == 1
        assert proc.lines[-1].startswith("kaffi: error: ")
        assert message in proc.output
        assert "Traceback" not in proc.output
    missing = Proc("beat", "no_such_module:app", cwd=tmp_path, env={})
    assert missing.wait() == 1
    assert "Traceback" not in missing.output


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_beat_pushes_logs_and_stops_gracefully(
    faktory_server: Any, app_path: str, tmp_path: Path, signum: int
) -> None:
    env = env_for(faktory_server, tmp_path)
    # One run finds the server through FAKTORY_URL, the other through --url.
    where = () if signum == signal.SIGTERM else ("--url", env.pop("FAKTORY_URL"))
    beat = Proc(
        *("beat", app_path, "--lookahead", "4", "--margin", "1", *where),
        cwd=tmp_path,
        env=env,
    )
    try:
        beat.wait_for("beat started: 2 schedule(s) (tick, nightly), lookahead 4 s, margin 1 s")
        beat.wait_for("periodic tick: pushed the occurrence at ")
    finally:
        code = beat.stop(signum)
    assert code == 0, beat.output
    assert re.search(r"beat stopped: \d+ pushed, 0 pushed late, \d+ skipped", beat.output)
    assert re.search(
        r"pushed the occurrence at \S+Z, jid tick@\d{8}T\d{6}Z~[0-9a-f]{10}", beat.output
    )
    assert "Traceback" not in beat.output
    assert faktory_server.info()["faktory"]["sets"]["scheduled"] >= 1


@pytest.mark.parametrize("processes", ["1", "2"])
def test_worker_with_beat_runs_the_periodic_jobs_with_one_scheduler(
    faktory_server: Any, app_path: str, tmp_path: Path, processes: str
) -> None:
    # With --processes 2 a supervisor runs two worker processes: only it runs the beat.
    worker = Proc(
        *("worker", app_path, "--beat", "--processes", processes),
        *("--lookahead", "3", "--margin", "1"),
        cwd=tmp_path,
        env=env_for(faktory_server, tmp_path),
    )
    log = tmp_path / "runs.log"
    try:
        wait_until(lambda: len(read_runs(log)) >= 2, "two periodic runs", 45)
    finally:
        code = worker.stop(signal.SIGTERM, timeout=45)
    assert code == 0, worker.output
    assert worker.output.count("beat started") == 1
    assert worker.output.count("beat stopped") == 1
    occurrences = [occurrence for occurrence, _ in read_runs(log)]
    assert len(occurrences) == len(set(occurrences))
