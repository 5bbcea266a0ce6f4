"""Periodic schedules and their occurrences, as pure arithmetic.

This module owns what a schedule *is* (a task's jobtype, its already validated JSON
arguments and job options, and a trigger: a cron expression in a time zone, or a fixed
interval), when it fires, the deterministic jid and payload of each occurrence, and
which occurrences one tick of a scheduler must push or skip (:func:`plan`).

It must never do I/O: no clock, no sockets, no logging. Every function takes the time it
works with as an argument, so tests drive it with any instant they like; the runner
(:mod:`kaffi.periodic.runner`) reads the clock and talks to the server.

Why the payloads are what they are: Faktory's scheduled set holds each identical job once
(see ``tests/server/test_scheduled_set_identity.py``). An occurrence pushed with
``at`` = ``created_at`` = the occurrence and a jid derived from the schedule's name, the
occurrence and a hash of the schedule's definition is byte-for-byte the same job in every
process, so any number of schedulers leave one job per occurrence, as long as each push
reaches the server while the occurrence is still in the future (the safety margin).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from kaffi.errors import ConfigurationError
from kaffi.protocol.models import format_rfc3339

__all__ = [
    "CUSTOM_KEY",
    "DEFAULT_LOOKAHEAD",
    "DEFAULT_MARGIN",
    "CronTrigger",
    "EveryTrigger",
    "LATE",
    "PUSH",
    "SKIP",
    "Plan",
    "Schedule",
    "Trigger",
    "parse_zone",
    "plan",
]

#: How far ahead of an occurrence a scheduler pushes it, at the earliest.
DEFAULT_LOOKAHEAD = timedelta(seconds=60)
#: How close to an occurrence a scheduler may still push it; closer, it is skipped.
DEFAULT_MARGIN = timedelta(seconds=5)
#: The ``custom`` key under which a periodic job carries its schedule and occurrence.
CUSTOM_KEY = "periodic"

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: The usual cron nicknames, as Vixie cron defines them (cronsim reads five fields only).
CRON_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_NAME_RE = re.compile(r"[A-Za-z0-9._:-]+")


def parse_zone(tz: str | None) -> ZoneInfo | None:
    """An IANA zone name as a ``ZoneInfo`` (None stays None: UTC)."""
    if tz is None:
        return None
    if not isinstance(tz, str) or not tz:
        raise ConfigurationError(
            f"tz must be an IANA time zone name like 'Europe/Berlin', got {tz!r}"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {tz!r}: use an IANA name like 'Europe/Berlin' or 'UTC'"
        ) from None


class CronTrigger:
    """Five cron fields (or ``@hourly``, ``@daily``...) read in a time zone.

    Daylight saving time follows Debian cron, as cronsim implements it: a job at a fixed
    wall-clock time that falls in a spring-forward gap runs at the first minute after the
    gap; one that falls in the repeated autumn hour runs once, the first time. Expressions
    with ``*`` in the minute or hour field run by elapsed time through both transitions
    (nothing in the gap, both passes of the repeated hour).
    """

    __slots__ = ("expression", "fields", "zone")

    def __init__(self, expression: str, zone: ZoneInfo | None) -> None:
        if not isinstance(expression, str) or not expression.strip():
            raise ConfigurationError(f"cron must be a cron expression string, got {expression!r}")
        text = " ".join(expression.split())
        fields = CRON_NICKNAMES.get(text.lower(), text)
        if text.startswith("@") and fields == text:
            raise ConfigurationError(
                f"unknown cron nickname {text!r}; known: {', '.join(CRON_NICKNAMES)}"
            )
        if len(fields.split()) != 5:
            raise ConfigurationError(
                f"cron {expression!r} must have five fields (minute hour day-of-month month"
                " day-of-week) or be a nickname like @hourly"
            )
        try:
            CronSim(fields, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ConfigurationError(f"cron {expression!r} is not valid: {exc}") from None
        self.expression = text
        self.fields = fields
        self.zone = zone

    def definition(self) -> dict[str, Any]:
        """What identifies this trigger, for the schedule's hash."""
        return {"cron": self.fields, "tz": self.zone.key if self.zone else None}

    def after(self, moment: datetime) -> Iterator[datetime]:
        """The occurrences strictly after ``moment`` (aware), in UTC, in order."""
        zone = self.zone or UTC
        start = moment.astimezone(UTC)
        try:
            for candidate in CronSim(self.fields, start.astimezone(zone)):
                occurrence = candidate.astimezone(UTC)
                # In the repeated autumn hour cronsim counts wall-clock time: a fixed-time
                # job it names may lie before ``moment`` in real time. Never go backwards.
                if occurrence > start:
                    yield occurrence
        except StopIteration:
            return

    def describe(self) -> str:
        """``cron '0 7 * * mon-fri' in Europe/Berlin``."""
        return f"cron {self.expression!r} in {self.zone.key if self.zone else 'UTC'}"


class EveryTrigger:
    """A fixed interval of elapsed time (whole seconds, at least one), aligned on the Unix
    epoch so every process computes the same instants: ``every=30 s`` fires at :00 and :30
    of each minute, ``every=1 h`` on each UTC hour. Daylight saving time does not move it."""

    __slots__ = ("seconds", "zone")

    def __init__(self, every: timedelta, zone: ZoneInfo | None) -> None:
        if not isinstance(every, timedelta):
            raise ConfigurationError(f"every must be a datetime.timedelta, got {every!r}")
        if every < timedelta(seconds=1) or every.microseconds:
            raise ConfigurationError(
                f"every must be a whole number of seconds, at least 1, got {every!r}"
            )
        self.seconds = int(every.total_seconds())
        self.zone = zone

    def definition(self) -> dict[str, Any]:
        """What identifies this trigger, for the schedule's hash."""
        return {"every": self.seconds}

    def after(self, moment: datetime) -> Iterator[datetime]:
        """The occurrences strictly after ``moment`` (aware), in UTC, in order."""
        step = timedelta(seconds=self.seconds)
        elapsed = (moment.astimezone(UTC) - _EPOCH) // step
        occurrence = _EPOCH + (elapsed + 1) * step
        while True:
            yield occurrence
            occurrence += step

    def describe(self) -> str:
        """``every 30 s``."""
        return f"every {self.seconds} s"


Trigger = CronTrigger | EveryTrigger


@dataclass(frozen=True)
class Schedule:
    """One periodic job: which task, with which arguments, when.

    ``args`` are the task's JSON arguments, already bound and validated against its
    signature (:meth:`kaffi.App.periodic` does that), and ``job`` the rest of the job's
    fields (queue, retry, reserve_for, backtrace, custom) from the task's options.
    """

    name: str
    jobtype: str
    trigger: Trigger
    args: list[Any]
    job: dict[str, Any] = field(default_factory=dict)
    catch_up: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise ConfigurationError(
                f"periodic name {self.name!r} must be letters, digits, '.', '_', ':' or '-'"
            )
        # A job's custom mapping must not already use the key periodic jobs are marked with.
        custom = self.job.get("custom") or {}
        if CUSTOM_KEY in custom:
            raise ConfigurationError(
                f"periodic {self.name!r}: custom key {CUSTOM_KEY!r} is reserved for the"
                " schedule's name and occurrence"
            )

    @property
    def zone(self) -> ZoneInfo | None:
        """The schedule's time zone (None: UTC)."""
        return self.trigger.zone

    @property
    def digest(self) -> str:
        """A short hash of everything that defines the schedule's jobs: a changed
        expression, interval, zone, argument or option gives new jids."""
        definition = {
            "name": self.name,
            "jobtype": self.jobtype,
            "trigger": self.trigger.definition(),
            "args": self.args,
            "job": self.job,
        }
        text = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def occurrences_after(self, moment: datetime) -> Iterator[datetime]:
        """Occurrences strictly after ``moment``, as aware UTC datetimes, in order."""
        return self.trigger.after(moment)

    def jid(self, occurrence: datetime) -> str:
        """The occurrence's jid, the same in every process: ``name@20260329T010000Z~hash``."""
        stamp = occurrence.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"{self.name}@{stamp}~{self.digest}"

    def payload(self, occurrence: datetime) -> dict[str, Any]:
        """The job to push for ``occurrence``: identical in every process."""
        at = format_rfc3339(occurrence)
        custom = dict(self.job.get("custom") or {})
        custom[CUSTOM_KEY] = {"schedule": self.name, "occurrence": at}
        return {
            **self.job,
            "jid": self.jid(occurrence),
            "jobtype": self.jobtype,
            "args": list(self.args),
            "at": at,
            "created_at": at,
            "custom": custom,
        }

    def describe(self) -> str:
        """``report: send_report, cron '0 7 * * mon-fri' in Europe/Berlin``."""
        extra = ", catch_up" if self.catch_up else ""
        return f"{self.name}: {self.jobtype}, {self.trigger.describe()}{extra}"


#: What a tick does with an occurrence.
PUSH, LATE, SKIP = "push", "late", "skip"


@dataclass
class Plan:
    """What one tick does with one schedule's occurrences, in time order: ``steps`` pairs
    each occurrence (aware UTC) with ``"push"`` (on time: between the look-ahead and the
    margin before it is due), ``"late"`` (missed, pushed anyway because the schedule has
    ``catch_up``) or ``"skip"`` (missed, dropped)."""

    steps: list[tuple[datetime, str]]

    def of(self, action: str) -> list[datetime]:
        """The occurrences given ``action``."""
        return [occurrence for occurrence, act in self.steps if act == action]


def plan(
    schedule: Schedule,
    *,
    handled_until: datetime,
    now: datetime,
    lookahead: timedelta = DEFAULT_LOOKAHEAD,
    margin: timedelta = DEFAULT_MARGIN,
) -> Plan:
    """The occurrences after ``handled_until`` that a tick at ``now`` must deal with.

    An occurrence at least ``margin`` and at most ``lookahead`` ahead of ``now`` is
    pushed; one closer than ``margin``, or past, was missed (the scheduler was not
    running, stalled, or could not reach the server): it is skipped, or pushed late when
    the schedule has ``catch_up``. Occurrences further ahead wait for a later tick.
    """
    steps: list[tuple[datetime, str]] = []
    horizon = now + lookahead
    threshold = now + margin
    for occurrence in schedule.occurrences_after(handled_until):
        if occurrence > horizon:
            break
        if occurrence >= threshold:
            steps.append((occurrence, PUSH))
        else:
            steps.append((occurrence, LATE if schedule.catch_up else SKIP))
    return Plan(steps)
