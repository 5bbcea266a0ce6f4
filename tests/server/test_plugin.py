"""The pytest plugin: ``faktory_server`` and ``kaffi_client``, embedded or KAFFI_TEST_URL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.support import embedded_server


def test_fixtures_give_a_fresh_server_and_a_client(faktory_server: Any, kaffi_client: Any) -> None:
    remote = os.environ.get("KAFFI_TEST_URL")
    if remote:
        assert faktory_server.url == remote
    else:
        assert faktory_server.url.startswith("tcp://127.0.0.1:")
        assert faktory_server.info()["faktory"]["queues"] == {}
    processed = faktory_server.info()["faktory"]["total_processed"]
    jid = kaffi_client.push({"jid": "jid-plugin-0001", "jobtype": "A", "args": [1]})
    assert jid == "jid-plugin-0001"
    job = kaffi_client.fetch("default")
    assert job is not None
    assert job.args == [1]
    kaffi_client.ack(job.jid)
    assert faktory_server.info()["faktory"]["total_processed"] == processed + 1


def test_kaffi_test_url_runs_the_same_tests_against_another_server(tmp_path: Path) -> None:
    (tmp_path / "test_remote.py").write_text(
        textwrap.dedent(
            """
            def test_uses_remote(faktory_server, kaffi_client):
                assert faktory_server.url == __import__("os").environ["KAFFI_TEST_URL"]
                assert faktory_server.info()["faktory"]["queues"]["leftover"] == 0  # flushed
                kaffi_client.push({"jid": "jid-remote-001", "jobtype": "A", "args": []})

            def test_server_only_controls_skip(faktory_server):
                faktory_server.advance_clock(60)
                raise AssertionError("not reached")
            """
        )
    )
    with embedded_server() as remote:
        from tests.server.wire import Wire, push_line

        w = Wire.hello(remote)
        try:
            w.send(push_line(jid="jid-leftover-1", queue="leftover"))
        finally:
            w.close()
        env = {**os.environ, "KAFFI_TEST_URL": remote.url}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-rs",
                str(tmp_path / "test_remote.py"),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "1 passed, 1 skipped" in result.stdout, result.stdout
        assert "needs the embedded server" in result.stdout
        assert "default" in remote.info()["faktory"]["queues"]  # the first test pushed there


JID_TESTS = "tests/protocol/test_protocol_jid.py"


def test_the_suite_stays_in_one_process_against_a_shared_server() -> None:
    # tests/conftest.py turns xdist workers off under KAFFI_TEST_URL: tests that FLUSH one
    # shared server must not run at the same time.
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFFI_", "PYTEST_"))}
    with embedded_server() as shared:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", JID_TESTS],
            cwd=repo,
            env={**env, "KAFFI_TEST_URL": shared.url},
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert "workers" not in result.stdout
