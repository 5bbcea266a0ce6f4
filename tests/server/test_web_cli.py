"""``kaffi server``'s web UI options: on by default at the port after --bind's, --web,
--no-web, and starting without the UI when its extra is missing or its port is taken."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from click.testing import CliRunner

from kaffi.cli import main
from kaffi.cli.server import _web_address
from tests.server.test_cli_server import _start, _stop


@pytest.fixture
def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "FAKTORY_PASSWORD"}


def _web_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline()


def test_help_and_refusals() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["server", "--help"])
    assert "--web HOST:PORT" in result.output
    assert "--no-web" in result.output
    result = runner.invoke(main, ["server", "--memory", "--web", "127.0.0.1:0", "--no-web"])
    assert result.exit_code == 1
    assert result.output.strip() == "kaffi: error: give --web or --no-web, not both"
    result = runner.invoke(
        main, ["server", "--memory", "--bind", "127.0.0.1:0", "--web", "0.0.0.0:0"]
    )
    assert result.exit_code == 1
    assert "web UI on 0.0.0.0 without a password" in result.output


def test_the_default_address_is_the_next_port() -> None:
    assert _web_address("127.0.0.1", 7419) == "127.0.0.1:7420"
    assert _web_address("localhost", 7419) == "localhost:7420"
    assert _web_address("::1", 9000) == "[::1]:9001"
    assert _web_address("127.0.0.1", 0) == "127.0.0.1:0"
    assert _web_address("127.0.0.1", 65535) == "127.0.0.1:0"


def test_the_ui_starts_with_the_server(env: dict[str, str]) -> None:
    proc, _ = _start(["--bind", "127.0.0.1:0", "--memory"], env)
    try:
        line = _web_line(proc)
        assert line.startswith("kaffi web UI on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        with urllib.request.urlopen(url + "health", timeout=30) as answer:
            assert b'"faktory_version":"1.10.0"' in answer.read()
        assert _web_line(proc).startswith("Press Ctrl-C")
    finally:
        _stop(proc, signal.SIGTERM)


def test_no_web_starts_none(env: dict[str, str]) -> None:
    proc, _ = _start(["--bind", "127.0.0.1:0", "--memory", "--no-web"], env)
    try:
        assert _web_line(proc).startswith("Press Ctrl-C")
    finally:
        _stop(proc, signal.SIGTERM)


def test_without_the_extra_the_server_says_how_to_get_it(env: dict[str, str]) -> None:
    # uvicorn "not installed": find_spec answers None for a module set to None.
    code = "import sys; sys.modules['uvicorn'] = None; from kaffi.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "server", "--bind", "127.0.0.1:0", "--memory"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("kaffi server listening on tcp://127.0.0.1:")
        assert _web_line(proc).startswith("Press Ctrl-C")
    finally:
        _, err = _stop(proc, signal.SIGTERM)
    assert "no web UI: the web UI needs the web extra: pip install 'kaffi[web]'" in err


def _port_before_a_taken_one() -> tuple[int, socket.socket]:
    """A free port whose next port is taken (by the returned socket)."""
    for _ in range(20):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1] - 1
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            taken.close()
            continue
        finally:
            probe.close()
        return port, taken
    pytest.skip("found no free port next to a taken one")


def test_a_taken_default_port_leaves_the_server_running(env: dict[str, str]) -> None:
    port, taken = _port_before_a_taken_one()
    try:
        proc, line = _start(["--bind", f"127.0.0.1:{port}", "--memory"], env)
        try:
            assert f"tcp://127.0.0.1:{port}," in line
            assert _web_line(proc).startswith("Press Ctrl-C")
        finally:
            _, err = _stop(proc, signal.SIGTERM)
    finally:
        taken.close()
    assert f"no web UI: cannot serve the web UI on 127.0.0.1:{port + 1}" in err


_IMPORT_CHECK = """
import contextlib, io, json, sys
import kaffi, kaffi.client, kaffi.worker
from kaffi.cli import main
from kaffi.server import EmbeddedServer
for args in (["--help"], ["server", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit:
            pass
with EmbeddedServer():
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_nothing_but_the_ui_imports_its_extra() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    imported = set(json.loads(out))
    assert "click" in imported  # the check ran the CLI
    assert not imported & {"starlette", "jinja2", "uvicorn", "anyio", "h11"}
