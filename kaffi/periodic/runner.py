"""The scheduler loop: push each schedule's occurrences ahead of time, through the client.

:class:`Beat` owns the clock and the network side of periodic jobs: every tick it asks
:func:`kaffi.periodic.schedule.plan` what is due, pushes it with the App's public sync
client (``app.client``, a pre-built payload with its explicit jid, ``at``,
``created_at`` and ``custom``), logs each occurrence, and sleeps until the next tick or
until it is told to stop. It keeps no store and takes no lock: the server's scheduled
set merges the identical copies other schedulers push (see :mod:`kaffi.periodic.schedule`).

Push middleware is not run for periodic jobs: a middleware that stamps something per
push (a trace id, the time) would make the copies of one occurrence differ, and the
server would keep them all. Worker middleware, retries and the dead set apply as usual.

It must never import the worker or the command line: ``kaffi beat`` and
``kaffi worker --beat`` run it, in the main thread or in a thread of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from kaffi.errors import ConfigurationError, KaffiError
from kaffi.periodic.schedule import (
    DEFAULT_LOOKAHEAD,
    DEFAULT_MARGIN,
    LATE,
    SKIP,
    Schedule,
    plan,
)

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.client import Client

__all__ = ["Beat", "BeatStats", "upcoming"]

log = logging.getLogger("kaffi.beat")

#: The longest a scheduler sleeps between two ticks.
MAX_TICK = 1.0


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class BeatStats:
    """What a :class:`Beat` did so far: occurrences pushed on time, pushed late (catch-up),
    skipped (missed, never pushed late), and pushes that failed (tried again next tick)."""

    pushed: int = 0
    late: int = 0
    skipped: int = 0
    failed_pushes: int = 0


class Beat:
    """Pushes the occurrences of ``schedules`` (default: all of ``app.periodic_schedules``).

    ``lookahead`` is how long before an occurrence it is pushed at the earliest, and
    ``margin`` how close to it a push is still allowed (a push must reach the server
    while the occurrence is in the future for identical copies to merge). ``clock``
    returns the current aware UTC time (tests pass their own). ``client`` is where the
    jobs go (default: ``app.client``); :meth:`close` closes the one given here.
    """

    def __init__(
        self,
        app: App,
        *,
        schedules: Sequence[Schedule] | None = None,
        lookahead: timedelta = DEFAULT_LOOKAHEAD,
        margin: timedelta = DEFAULT_MARGIN,
        clock: Callable[[], datetime] = _utc_now,
        client: Client | None = None,
    ) -> None:
        if margin < timedelta(0):
            raise ConfigurationError(f"margin must not be negative, got {margin}")
        if lookahead < margin + timedelta(seconds=2):
            raise ConfigurationError(
                f"lookahead ({lookahead.total_seconds():g} s) must be at least 2 s longer"
                f" than the margin ({margin.total_seconds():g} s), so every occurrence is"
                " seen by a tick inside its push window"
            )
        self.app = app
        self.schedules = list(app.periodic_schedules.values() if schedules is None else schedules)
        self.lookahead = lookahead
        self.margin = margin
        self.clock = clock
        self.client = client
        self.stats = BeatStats()
        self._handled: dict[str, datetime] = {}
        self.tick_interval = min(MAX_TICK, (lookahead - margin).total_seconds() / 4)

    def tick(self) -> int:
        """One pass over every schedule; returns how many occurrences it pushed."""
        now = self.clock()
        pushed = 0
        for schedule in self.schedules:
            # A schedule first seen now starts from now: what was due before this
            # scheduler ran is not replayed (there is no store saying what ran).
            starting = schedule.name not in self._handled
            handled = self._handled.setdefault(schedule.name, now)
            step = plan(
                schedule,
                handled_until=handled,
                now=now,
                lookahead=self.lookahead,
                margin=self.margin,
            )
            # In time order; the cursor stops before a failed push, which the next tick
            # tries again (or skips, once it is too close).
            cursor = handled
            for occurrence, action in step.steps:
                if action == SKIP:
                    self._skip(schedule, occurrence, now, starting)
                elif not self._push(schedule, occurrence, late=action == LATE):
                    break
                else:
                    pushed += 1
                cursor = occurrence
            self._handled[schedule.name] = cursor
        return pushed

    def _skip(
        self, schedule: Schedule, occurrence: datetime, now: datetime, starting: bool
    ) -> None:
        self.stats.skipped += 1
        # At start an occurrence inside the margin is expected; later a skip means the
        # scheduler missed its window (stalled, or the server was unreachable).
        log.log(
            logging.INFO if starting else logging.WARNING,
            "periodic %s: skipped the occurrence at %s (%s); it is never pushed late"
            " (catch_up=True pushes missed occurrences)",
            schedule.name,
            _when(occurrence),
            "past" if occurrence <= now else "closer than the margin",
        )

    def _push(self, schedule: Schedule, occurrence: datetime, *, late: bool) -> bool:
        payload = schedule.payload(occurrence)
        try:
            (self.client or self.app.client).push(payload)
        except KaffiError as exc:
            self.stats.failed_pushes += 1
            log.warning(
                "periodic %s: could not push the occurrence at %s (%s); trying again",
                schedule.name,
                _when(occurrence),
                exc,
            )
            return False
        if late:
            self.stats.late += 1
        else:
            self.stats.pushed += 1
        # Faktory does not say whether a PUSH merged with an identical job already in
        # the scheduled set, so "pushed" is all this process can know.
        log.info(
            "periodic %s: pushed the occurrence at %s%s, jid %s (an identical copy pushed"
            " by another scheduler is merged by the server)",
            schedule.name,
            _when(occurrence),
            " late (catch_up)" if late else "",
            payload["jid"],
        )
        return True

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set (it is checked between ticks and wakes the sleep)."""
        if not self.schedules:
            log.warning("no periodic schedules registered: nothing to push")
        names = ", ".join(s.name for s in self.schedules)
        log.info(
            "beat started: %d schedule(s) (%s), lookahead %g s, margin %g s",
            len(self.schedules),
            names,
            self.lookahead.total_seconds(),
            self.margin.total_seconds(),
        )
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                # A bug in one tick (a schedule's arithmetic, a client option) must not
                # end the scheduler silently, least of all inside a worker process.
                log.exception("beat: a tick failed; trying again at the next one")
            stop.wait(max(0.0, self.tick_interval - (time.monotonic() - started)))
        log.info(
            "beat stopped: %d pushed, %d pushed late, %d skipped",
            self.stats.pushed,
            self.stats.late,
            self.stats.skipped,
        )

    def close(self) -> None:
        """Close the client given to this Beat (the App's own stays the App's)."""
        if self.client is not None:
            self.client.close()


def _when(occurrence: datetime) -> str:
    return occurrence.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def upcoming(schedule: Schedule, now: datetime, count: int = 5) -> list[datetime]:
    """The next ``count`` occurrences of ``schedule`` after ``now`` (aware UTC)."""
    found: list[datetime] = []
    for occurrence in schedule.occurrences_after(now):
        found.append(occurrence)
        if len(found) == count:
            break
    return found
