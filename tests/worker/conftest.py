"""Helpers for worker tests: run a Worker in a thread, read INFO, write an app module
for the command line, and read a subprocess's log lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from kaffi.app import App
from kaffi.protocol.models import FaktoryInfo
from tests.support import LogLines, kaffi_process


def stats(app: App) -> FaktoryInfo:
    return app.client.info().faktory


@pytest.fixture
def app(faktory_server: Any) -> Iterator[App]:
    application = App(url=faktory_server.url)
    try:
        yield application
    finally:
        application.close()


# -- the command line -----------------------------------------------------------------------

APP_SOURCE = """
import os
import time

import kaffi

# Tests of an unreachable server shorten the connect timeout (5 s by default) this way.
app = kaffi.App(connect_timeout=float(os.environ.get("KAFFI_TEST_CONNECT_TIMEOUT", "5")))
OUT = os.environ.get("KAFFI_TEST_OUT")


def _record(text):
    if OUT:
        with open(OUT, "a") as f:
            f.write(text + "\\n")


@app.task
def record(tag: str) -> None:
    _record(tag)


@app.task
def slow(tag: str, seconds: float) -> None:
    time.sleep(seconds)
    _record(tag)


@app.task
async def arecord(tag: str) -> None:
    _record(tag)


@app.task
def hang() -> None:
    _record("hanging")
    time.sleep(300)


HOARD = []


@app.task
def hoard(tag: str, megabytes: int) -> None:
    # Written bytes, so the pages are resident: the process's RSS grows by that much.
    HOARD.append(b"x" * (megabytes << 20))
    _record(tag)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory with ``tasks_app.py`` (see APP_SOURCE) to run ``kaffi worker`` in."""
    (tmp_path / "tasks_app.py").write_text(textwrap.dedent(APP_SOURCE))
    return tmp_path


@pytest.fixture
def fresh_tasks_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CliRunner imports tasks_app into this process: never reuse another test's copy, and
    take back the log handler the command installs on the root logger."""
    monkeypatch.delitem(sys.modules, "tasks_app", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    yield
    sys.modules.pop("tasks_app", None)
    root.handlers[:] = saved[1]
    root.setLevel(saved[0])


def worker_env(project: Path, url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("FAKTORY_PROVIDER", None)
    env["FAKTORY_URL"] = url
    env["KAFFI_TEST_OUT"] = str(project / "out.txt")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def read_out(project: Path) -> list[str]:
    path = project / "out.txt"
    return path.read_text().splitlines() if path.exists() else []


@contextmanager
def kaffi_worker(
    project: Path, url: str, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], LogLines]]:
    """``python -m kaffi worker ARGS`` in ``project`` (``env``: extra variables); stopped
    if a test leaves it running."""
    with kaffi_process(
        "worker", *args, cwd=project, env={**worker_env(project, url), **(env or {})}
    ) as running:
        yield running
