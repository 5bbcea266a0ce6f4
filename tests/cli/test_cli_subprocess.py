"""The operator commands as real processes (``python -m kaffi ...``), as a user runs them:
exit statuses, stdout/stderr, and one-line errors without a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from kaffi.client import Client
from tests.support import closed_port_url, embedded_server

TIMEOUT = 30


def kaffi(
    *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("FAKTORY_URL", "FAKTORY_PROVIDER")}
    return subprocess.run(
        [sys.executable, "-m", "kaffi", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**base, **(env or {})},
        stdin=None if input is not None else subprocess.DEVNULL,
    )


@pytest.fixture
def server_url(faktory_server: Any, kaffi_client: Client) -> str:
    kaffi_client.flush()
    url = faktory_server.url
    assert isinstance(url, str)
    return url


def test_push_info_and_flush(server_url: str, kaffi_client: Client) -> None:
    pushed = kaffi("push", "resize", "7", '{"w":640}', "--queue", "images", "--url", server_url)
    assert pushed.returncode == 0, pushed.stderr
    jid = pushed.stdout.strip()
    assert len(jid) >= 8

    info = kaffi("info", "--url", server_url)
    assert info.returncode == 0, info.stderr
    row = next(line for line in info.stdout.splitlines() if line.startswith("images"))
    assert row.split()[1] == "1"

    raw = kaffi("info", "--json", "--url", server_url)
    assert json.loads(raw.stdout)["faktory"]["queues"]["images"] == 1

    job = kaffi_client.fetch("images")
    assert job is not None
    assert (job.jid, job.jobtype, job.args) == (jid, "resize", [7, {"w": 640}])

    flushed = kaffi("flush", "--yes", "--url", server_url)
    assert flushed.returncode == 0, flushed.stderr
    assert flushed.stdout.strip() == "flushed"


def test_bulk_from_stdin_and_env_url(server_url: str, kaffi_client: Client) -> None:
    lines = [json.dumps({"jobtype": "b", "args": [i], "queue": "sub"}) for i in range(5)]
    lines.insert(2, "not json")
    result = kaffi("push", "--bulk", "-", input="\n".join(lines), env={"FAKTORY_URL": server_url})
    assert result.returncode == 1
    assert result.stdout.strip() == "pushed 5 jobs"
    assert "line 3: not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr
    assert kaffi_client.info().faktory.queues["sub"] == 5


def test_destructive_commands_refuse_without_a_terminal(
    server_url: str, kaffi_client: Client
) -> None:
    kaffi_client.push({"jobtype": "x", "args": [], "queue": "keep", "jid": "keep-jid-0001"})
    for args in (["flush"], ["queue", "remove", "keep"], ["mutate", "dead", "clear"]):
        result = kaffi(*args, "--url", server_url)
        assert result.returncode == 1, args
        last = result.stderr.splitlines()[-1]
        assert last.startswith("kaffi: error: not confirmed"), result.stderr
    assert kaffi_client.info().faktory.queues["keep"] == 1


def test_unreachable_server_is_one_line() -> None:
    url = closed_port_url()
    result = kaffi("info", "--url", url)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kaffi: error: ")
    assert url.removeprefix("tcp://") in lines[0]


def test_wrong_password_is_one_line() -> None:

    with embedded_server(password="s3cret") as server:
        result = kaffi("push", "x", "--url", f"tcp://:not-it@127.0.0.1:{server.port}")
        assert result.returncode == 1
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("kaffi: error: ")
        assert "password" in lines[0]
        assert "not-it" not in lines[0]


def test_bad_faktory_url_is_one_line() -> None:
    result = kaffi("info", env={"FAKTORY_URL": "redis://localhost:6379"})
    assert result.returncode == 1
    assert result.stderr.startswith("kaffi: error: ")
    assert len(result.stderr.splitlines()) == 1
    assert "tcp://" in result.stderr


def test_version_and_help() -> None:
    version = kaffi("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("kaffi ")
    helped = kaffi("--help")
    for command in ("info", "push", "queue", "mutate", "flush"):
        assert command in helped.stdout
