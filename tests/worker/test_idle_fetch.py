"""Slots step out of lockstep once idle, without delaying work that is waiting."""

from __future__ import annotations

import threading

import pytest

from kaffi.app import App
from kaffi.worker import Worker, processor
from tests.support import WAIT, running, wait_until


def test_each_slot_pauses_once_after_its_first_empty_fetch_and_never_before_work(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[int] = []

    def recording_delay(spread: float = 0.1, rng: object = None) -> float:
        slot = processor._current_slot.get()
        assert slot is not None
        pauses.append(slot.index)
        return 0.0

    monkeypatch.setattr(processor, "idle_fetch_delay", recording_delay)
    together = threading.Barrier(3, timeout=WAIT)
    seen_while_running: list[list[int]] = []

    @app.task
    def meet() -> None:
        # All three slots hold a job at once: each one's first FETCH brought a job.
        together.wait()
        seen_while_running.append(list(pauses))

    for _ in range(3):
        meet.delay()
    with running(Worker(app, concurrency=3)) as worker:
        wait_until(lambda: worker.processed == 3, "the three jobs")
        wait_until(lambda: len(pauses) == 3, "every slot to find the queue empty")
    assert seen_while_running == [[], [], []], "a slot paused before taking waiting work"
    assert sorted(pauses) == [0, 1, 2], "each slot pauses once, after its first empty FETCH"
