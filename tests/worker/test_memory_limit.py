"""A memory limit below a worker's idle size, and how often a supervisor replaces a child."""

from __future__ import annotations

import logging
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaffi._procinfo import rss_kb
from kaffi.app import App
from kaffi.cli import main
from kaffi.errors import ConfigurationError
from kaffi.worker.lifecycle import check_memory_limit
from kaffi.worker.supervisor import STARTS_PER_MINUTE, Supervisor
from tests.support import WAIT, start


def test_a_limit_below_the_idle_size_is_refused() -> None:
    idle_mb = rss_kb() / 1024
    with pytest.raises(ConfigurationError) as caught:
        check_memory_limit(1.0)
    message = str(caught.value)
    assert message.startswith("max_memory_mb is 1 MB, below a worker's idle size (")
    assert "\n" not in message
    check_memory_limit(idle_mb * 4)  # room to work: accepted


def test_a_worker_with_such_a_limit_does_not_start(app: App) -> None:
    worker = app.worker(max_memory_mb=1)
    thread, errors = start(worker)
    thread.join(WAIT)
    assert not thread.is_alive()
    (error,) = errors
    assert isinstance(error, ConfigurationError)
    assert "below a worker's idle size" in str(error)
    assert not worker.ready.is_set()


def test_kaffi_worker_refuses_it_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    name = f"kaffi_small_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text("import kaffi\napp = kaffi.App()\n")
    result = CliRunner().invoke(
        main,
        ["worker", f"{name}:app", "--max-memory-per-child", "1", "--url", "tcp://127.0.0.1:1"],
    )
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("kaffi:")]
    assert line.startswith(
        "kaffi: error: --max-memory-per-child is 1 MB, below a worker's idle size ("
    ), result.stderr
    assert "started worker process" not in result.stderr


def test_a_slot_replaced_too_often_waits_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kaffi.supervisor")
    sup = Supervisor("nowhere:app", processes=1, worker_options={}, cpu_affinity="off")
    now = time.monotonic()
    sup._starts[0] = [now - 50 + i for i in range(STARTS_PER_MINUTE - 1)]
    assert sup._start_at(0, now, "recycling: RSS 52 MB above the limit of 10 MB") == now
    assert caplog.records == []

    sup._starts[0].append(now - 1)  # the tenth start within the minute
    why = "recycling: RSS 52 MB above the limit of 10 MB"
    when = sup._start_at(0, now, why)
    # The oldest start (50 s ago) leaves the window in about 10 s.
    assert when == pytest.approx(now + 10)
    (record,) = caplog.records
    message = record.getMessage()
    assert f"started {STARTS_PER_MINUTE} times in the last minute" in message
    assert f"(last replaced: {why})" in message
    assert "waiting 10s before starting another" in message

    # A recycle then schedules the replacement instead of starting it at once.
    sup._replace(0, why)
    assert sup.children == []
    ((due, _, slot),) = sup._restarts
    assert slot == 0
    assert due == pytest.approx(now + 10, abs=1)
