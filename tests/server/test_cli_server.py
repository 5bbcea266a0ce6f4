"""``kaffi server``: options, refusals, clean stop on SIGTERM, worker signals from outside."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaffi.cli import main
from kaffi.cli.server import default_data_path
from kaffi.server import EmbeddedServer
from tests.server.wire import Wire


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(main, ["server", "--help"])
    assert result.exit_code == 0
    for option in (
        "--bind",
        "--data",
        "--memory",
        "--password",
        "--tls-cert",
        "--tls-key",
        "--log-level",
        "--quiet-worker",
        "--terminate-worker",
    ):
        assert option in result.output


def test_refusals_are_one_line() -> None:
    runner = CliRunner()
    result = runner.invoke(
        main, ["server", "--bind", "0.0.0.0:0", "--memory"], env={"FAKTORY_PASSWORD": ""}
    )
    assert result.exit_code == 1
    assert "without a password" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(main, ["server", "--memory", "--data", "x.db"])
    assert result.exit_code == 1
    assert "not both" in result.output


def test_default_data_path_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    if sys.platform != "win32":
        assert default_data_path() == tmp_path / "kaffi" / "server.sqlite3"


def test_quiet_and_terminate_worker_from_outside(
    srv: EmbeddedServer, wire: Callable[..., Wire]
) -> None:
    w = wire("w-cli")
    runner = CliRunner()
    result = runner.invoke(main, ["server", "--url", srv.url, "--quiet-worker", "w-cli"])
    assert result.exit_code == 0, result.output
    assert w.send('BEAT {"wid":"w-cli"}')[1] == '{"state":"quiet"}'
    bind = f"{srv.host}:{srv.port}"
    result = runner.invoke(main, ["server", "--bind", bind, "--terminate-worker", "w-cli"])
    assert result.exit_code == 0, result.output
    assert w.send('BEAT {"wid":"w-cli"}')[1] == '{"state":"terminate"}'
    result = runner.invoke(main, ["server", "--url", srv.url, "--quiet-worker", "nobody"])
    assert result.exit_code == 1
    assert "unknown worker nobody" in result.output


def test_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "FAKTORY_PASSWORD": "pw-from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaffi", "server", "--bind", "127.0.0.1:0", "--memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else ""
        assert "listening on tcp://127.0.0.1:" in line, line
        assert "in memory" in line, line
        host, port = line.split("tcp://")[1].split(",")[0].rsplit(":", 1)
        w = Wire(host, int(port))
        try:
            assert '"s":' in w.line()  # the password from FAKTORY_PASSWORD is in force
        finally:
            w.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in out
        assert "pw-from-env" not in out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
