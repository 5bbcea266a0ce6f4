"""What a failed job logs and sends: the user's frames, not the worker's."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import kaffi
from kaffi.app import App
from kaffi.worker.joblog import TextFormatter
from tests.support import running, wait_until

from .test_worker import failed_jobs

KAFFI_DIR = str(Path(kaffi.__file__).parent)


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def job_lines() -> Iterator[Keep]:
    keep = Keep()
    logger = logging.getLogger("kaffi.job")
    logger.addHandler(keep)
    try:
        yield keep
    finally:
        logger.removeHandler(keep)


def helper(word: str) -> None:
    raise ValueError(f"bad {word}")


def test_a_failing_job_logs_and_sends_its_own_frames_first(app: App, job_lines: Keep) -> None:
    @app.task(queue="trace", retry=3)
    def explode(word: str) -> None:
        helper(word)

    explode.delay("thing")
    with running(app.worker(queues=["trace"], concurrency=1)) as worker:
        wait_until(lambda: worker.failed == 1, "the failure")
    (record,) = [r for r in job_lines.records if r.levelno == logging.WARNING]
    text = TextFormatter().format(record)
    frames = [line for line in text.splitlines() if line.lstrip().startswith("File ")]
    # The traceback starts at the job function; the worker's frames that called it are
    # left out.
    assert "in explode" in frames[0], text
    assert "in helper" in frames[-1], text
    assert not any(KAFFI_DIR in line for line in frames), text
    ((_, failure),) = failed_jobs(app, "trace")
    assert failure.backtrace is not None
    assert "in helper" in failure.backtrace[0]
    assert "in explode" in failure.backtrace[1]
    assert not any(KAFFI_DIR in line for line in failure.backtrace), failure.backtrace


def test_a_job_failing_for_a_configuration_reason_is_one_line(app: App, job_lines: Keep) -> None:
    @app.task(queue="config")
    def add(a: int, b: int) -> None:
        del a, b

    app.client.push({"jobtype": "no_such_task", "args": [], "queue": "config", "retry": 1})
    app.client.push({"jobtype": "add", "args": ["x", "y"], "queue": "config", "retry": 1})
    with running(app.worker(queues=["config"], concurrency=1)) as worker:
        wait_until(lambda: worker.failed == 2, "both failures")
    failures = [r for r in job_lines.records if r.levelno == logging.WARNING]
    assert len(failures) == 2
    for record in failures:
        text = TextFormatter().format(record)
        assert "\n" not in text, text
        assert record.exc_info is None
    messages = sorted(r.getMessage() for r in failures)
    assert "fail (ArgumentsError: task 'add': argument 'a'" in messages[0]
    assert "fail (UnknownJobType: no task is registered for jobtype 'no_such_task'" in messages[1]
    # The FAIL still says where kaffi refused the job (nothing of it is the user's).
    for _, failure in failed_jobs(app, "config", 2):
        assert failure.backtrace, failure
