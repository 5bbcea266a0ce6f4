"""``kaffi server``: options, refusals, clean stop on SIGTERM, worker signals from outside."""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
from click.testing import CliRunner

import kaffi
from kaffi.cli import main
from kaffi.cli.server import default_data_path
from kaffi.client import Client
from kaffi.errors import AuthenticationError
from kaffi.server import EmbeddedServer
from tests.reliability import certs
from tests.server.wire import Wire
from tests.support import embedded_server


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
        "--fetch-hold",
        "--quiet-worker",
        "--terminate-worker",
        "--enterprise",
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
    result = runner.invoke(main, ["server", "--memory", "--tls-cert", __file__])
    assert result.exit_code == 1
    assert result.output.strip() == "kaffi: error: TLS needs both --tls-cert and --tls-key"
    for hold in ("0", "nan", "7200"):
        result = runner.invoke(main, ["server", "--memory", "--fetch-hold", hold])
        assert result.exit_code == 1, result.output
        assert result.output.startswith("kaffi: error: fetch_hold must be from 0.001 to 3600")
        assert "Traceback" not in result.output


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


#: A server on a free port, in memory, whose empty FETCH answers after 0.05 s.
SERVE_ARGS = ("--bind", "127.0.0.1:0", "--memory", "--fetch-hold", "0.05")


class ServerAt(NamedTuple):
    """Where a server listens, as ``Wire.hello`` wants it."""

    host: str
    port: int


def test_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "FAKTORY_PASSWORD": "pw-from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaffi", "server", *SERVE_ARGS],
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
        w = Wire.hello(ServerAt(host, int(port)), "w-hold", password="pw-from-env")
        try:
            started = time.monotonic()
            assert w.send("FETCH empty") == ["$-1"]
            # --fetch-hold 0.05: never Faktory's 2 s, even on a loaded machine.
            assert time.monotonic() - started < 1.5
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


# -- the server as a real process ------------------------------------------------------


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m kaffi server ...``; return it and its first line (where it listens)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaffi", "server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if "listening on" not in line:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        raise AssertionError(f"the server did not start: {line!r} {err!r}")
    return proc, line


def _stop(proc: subprocess.Popen[str], signum: int) -> tuple[str, str]:
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "kaffi server stopped." in out
    return out, err


def _port(line: str) -> int:
    return int(line.split("://", 1)[1].split(",", 1)[0].rsplit(":", 1)[1])


def test_default_data_location_is_printed_and_sigint_stops_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FAKTORY_PASSWORD"}
    env["XDG_DATA_HOME"] = str(tmp_path)
    expected = tmp_path / "kaffi" / "server-127.0.0.1-0.sqlite3"
    proc, line = _start(["--bind", "127.0.0.1:0"], env)
    try:
        assert f"data in {expected}" in line, line
        with Client(f"tcp://127.0.0.1:{_port(line)}") as client:
            jid = client.push({"jobtype": "kept", "queue": "cli-q"})
    finally:
        _, err = _stop(proc, signal.SIGINT)
    # The "listening" line is printed once, on stdout, not logged a second time.
    assert "listening" not in err
    assert expected.exists()
    # The job is in the default file: a server started on it again hands it out.
    with embedded_server(data=expected) as srv, Client(srv.url) as client:
        job = client.fetch("cli-q")
        assert job is not None
        assert job.jid == jid


def test_default_data_file_is_per_bind_address(tmp_path: Path) -> None:
    """Two servers on two ports start side by side with their default data files."""
    env = {k: v for k, v in os.environ.items() if k != "FAKTORY_PASSWORD"}
    env["XDG_DATA_HOME"] = str(tmp_path)
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    first, first_line = _start(["--bind", f"127.0.0.1:{ports[0]}"], env)
    try:
        second, second_line = _start(["--bind", f"127.0.0.1:{ports[1]}"], env)
        _stop(second, signal.SIGTERM)
    finally:
        _stop(first, signal.SIGTERM)
    assert f"server-127.0.0.1-{ports[0]}.sqlite3" in first_line
    assert f"server-127.0.0.1-{ports[1]}.sqlite3" in second_line


def test_default_data_path_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    folder = tmp_path / "kaffi"
    # The default address keeps the file it always had, so existing data carries over.
    assert default_data_path() == folder / "server.sqlite3"
    assert default_data_path("127.0.0.1", 7419) == folder / "server.sqlite3"
    assert default_data_path("127.0.0.1", 7500) == folder / "server-127.0.0.1-7500.sqlite3"
    assert default_data_path("::1", 7419) == folder / "server-__1-7419.sqlite3"


def test_a_data_file_in_use_says_what_to_do(tmp_path: Path) -> None:
    data = tmp_path / "one.sqlite3"
    with EmbeddedServer(data=data):
        result = CliRunner().invoke(main, ["server", "--bind", "127.0.0.1:0", "--data", str(data)])
    assert result.exit_code == 1
    assert "another server is using it" in result.stderr
    assert "(--data FILE) or none (--memory)" in result.stderr


@pytest.mark.parametrize(
    ("bind", "needle"),
    [
        ("nonsense", "no port; give HOST:PORT"),
        ("127.0.0.1:http", "the port must be a number"),
        ("127.0.0.1:70000", "port 70000 is out of range"),
        ("::1", "IPv6 addresses go in brackets"),
        ("[::1", "give HOST:PORT"),
        ("[nope]:7419", "'nope' is not an IPv6 address"),
        ("bad host:7419", "'bad host' is not a host name or address"),
        ("nonsense.invalid:7419", "cannot resolve host 'nonsense.invalid'"),
    ],
)
def test_bind_must_be_host_colon_port(bind: str, needle: str) -> None:
    result = CliRunner().invoke(main, ["server", "--bind", bind, "--memory"])
    assert result.exit_code == 1, result.output
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_password_data_and_log_level_options(tmp_path: Path) -> None:
    if certs.available() is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    pki = certs.make_pki(tmp_path)
    data = tmp_path / "jobs.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "FAKTORY_PASSWORD"}
    args = ["--bind", "127.0.0.1:0", "--data", str(data), "--password", "pw-cli"]
    args += ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    proc, line = _start([*args, "--log-level", "warning"], env)
    try:
        assert line.startswith("kaffi server listening on tcp+tls://127.0.0.1:"), line
        assert f"data in {data}" in line
        port = _port(line)
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        with Client(f"tcp+tls://:pw-cli@127.0.0.1:{port}", tls=ctx) as client:
            client.push({"jobtype": "secure"})
            assert client.info().faktory.queues == {"default": 1}
        with (
            Client(f"tcp+tls://:wrong@127.0.0.1:{port}", tls=ctx) as client,
            pytest.raises(AuthenticationError),
        ):
            client.connect()
    finally:
        out, err = _stop(proc, signal.SIGTERM)
    assert "pw-cli" not in out + err
    assert "INFO" not in err  # --log-level warning keeps the info lines out


def test_console_script_and_python_m_kaffi() -> None:
    script = Path(sys.executable).with_name("kaffi")
    if not script.exists():
        pytest.skip(f"the kaffi console script is not installed next to {sys.executable}")
    version = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"kaffi {kaffi.__version__}"
    helped = subprocess.run(
        [sys.executable, "-m", "kaffi", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "Usage: kaffi" in helped.stdout
    assert "server" in helped.stdout


def test_enterprise_flag_serves_unique_jobs_and_track() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FAKTORY_PASSWORD"}
    proc, line = _start(["--bind", "127.0.0.1:0", "--memory", "--no-web", "--enterprise"], env)
    try:
        with Client(f"tcp://127.0.0.1:{_port(line)}") as client:
            job = {"jobtype": "u", "args": [1], "custom": {"unique_for": 60, "track": 1}}
            jid = client.push(job)
            with pytest.raises(kaffi.NotUnique):
                client.push(dict(job))
            assert client.track_get(jid).state == "enqueued"
            assert "Enterprise" in client.info().raw["server"]["description"]
    finally:
        _stop(proc, signal.SIGTERM)
