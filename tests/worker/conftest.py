"""Helpers for worker tests: run a Worker in a thread, poll with a deadline, read INFO,
write an app module for the command line, and read a subprocess's log lines."""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kaffi.app import App
from kaffi.app.workers import WorkerHandle
from kaffi.protocol.models import FaktoryInfo

#: Any worker: ``app.worker()`` promises a WorkerHandle, ``Worker(...)`` is one.
W = TypeVar("W", bound=WorkerHandle)

#: Upper bound for anything a test waits for; generous for a loaded 2-core machine.
WAIT = 30.0


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)


def start(worker: WorkerHandle) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``worker`` in a thread; the list gets whatever ``run()`` raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(worker.run())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    return thread, errors


@contextmanager
def running(worker: W) -> Iterator[W]:
    """Run ``worker`` in a thread; stop it (and check it stopped cleanly) on exit."""
    thread, errors = start(worker)
    assert worker.ready.wait(WAIT), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop(timeout=WAIT)
        thread.join(WAIT)
        assert not thread.is_alive(), "worker thread did not end"
    if errors:
        raise errors[0]


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

app = kaffi.App()
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


class LogReader:
    """Collects a subprocess's stderr lines in a thread, for waiting on log lines."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, needle: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        try:
            wait_until(
                lambda: sum(needle in line for line in self.lines) >= count,
                f"{count} log line(s) with {needle!r}",
                timeout,
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the log:\n" + "\n".join(self.lines[-40:])) from None
        return [line for line in self.lines if needle in line]

    def close(self) -> None:
        self._thread.join(WAIT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def kaffi_worker(
    project: Path, url: str, *args: str
) -> Iterator[tuple[subprocess.Popen[str], LogReader]]:
    """``python -m kaffi worker ARGS`` in ``project``; killed if a test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaffi", "worker", *args],
        cwd=project,
        env=worker_env(project, url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reader = LogReader(proc)
    try:
        yield proc, reader
    finally:
        if proc.poll() is None:
            # A graceful stop first: a supervisor passes it on to its children, which
            # hold the stderr pipe open for as long as they live.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(WAIT / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(WAIT)
        reader.close()
