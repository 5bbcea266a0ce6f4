"""The Node client's module-level API: kaffi.use, register, connect, work, stop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kaffi
import kaffi.app as app_module
from kaffi import App, JobContext


@pytest.fixture
def default_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """A fresh default App for each test (the module keeps one per process)."""
    monkeypatch.setattr(app_module, "_default_app", None)
    app = app_module.default_app()
    yield app
    app.close()


def test_public_names_are_importable() -> None:
    assert kaffi.App is App
    assert kaffi.Task is app_module.Task
    assert kaffi.JobContext is JobContext
    assert callable(kaffi.current_job)
    for name in ("use", "register", "connect", "work", "stop"):
        assert callable(getattr(kaffi, name))


def test_use_and_register_act_on_the_default_app_and_chain(default_app: App) -> None:
    def mw(ctx: JobContext, next: Callable[[], None]) -> None:
        next()

    def add(a: int, b: int) -> int:
        return a + b

    assert kaffi.register("add", add) is default_app
    assert kaffi.use(mw).register("sub", lambda a, b: a - b) is default_app
    assert default_app.tasks["add"].fn is add
    assert set(default_app.tasks) == {"add", "sub"}
    assert default_app.middleware == [mw]
    assert app_module.default_app() is default_app


def test_stop_without_a_running_worker_does_nothing(
    default_app: App, faktory_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKTORY_URL", faktory_server.url)
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    assert app_module._running is None
    kaffi.stop()
    assert app_module._running is None
    # Nothing is left pending: the next work() runs its job as if stop() was never called.
    seen: list[int] = []
    kaffi.register("add", lambda a, b: seen.append(a + b))
    default_app.tasks["add"].delay(1, 1)
    worker = kaffi.work(concurrency=1, burst=True)
    assert seen == [2]
    assert worker.processed == 1


def test_work_runs_the_default_app_until_burst_ends(
    default_app: App, faktory_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKTORY_URL", faktory_server.url)
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    seen: list[int] = []
    kaffi.register("add", lambda a, b: seen.append(a + b))
    default_app.tasks["add"].delay(2, 3)
    worker = kaffi.work(concurrency=1, burst=True)
    assert seen == [5]
    assert worker.processed == 1


def test_stop_ends_work_from_another_thread(
    default_app: App, faktory_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKTORY_URL", faktory_server.url)
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    started = threading.Event()
    kaffi.register("ping", started.set)
    default_app.tasks["ping"].delay()
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(kaffi.work(concurrency=1)))
    runner.start()
    try:
        # work() records its worker before running any job.
        assert started.wait(30), "the worker never ran the job"
        kaffi.stop()
    finally:
        runner.join(30)
    assert not runner.is_alive()
    assert len(outcome) == 1
    assert app_module._running is None
