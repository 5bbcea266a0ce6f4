"""The occurrence arithmetic of kaffi.periodic.schedule, with instants the tests choose."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from itertools import islice, pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from kaffi.errors import ConfigurationError
from kaffi.periodic.schedule import (
    CUSTOM_KEY,
    LATE,
    PUSH,
    SKIP,
    CronTrigger,
    EveryTrigger,
    Schedule,
    parse_zone,
    plan,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def cron(expression: str, zone: ZoneInfo | None = None, **kw: Any) -> Schedule:
    return Schedule("s", "job", CronTrigger(expression, zone), [1], **kw)


def every(seconds: int, **kw: Any) -> Schedule:
    return Schedule("s", "job", EveryTrigger(timedelta(seconds=seconds), None), [], **kw)


def first(schedule: Schedule, after: datetime, count: int) -> list[datetime]:
    return list(islice(schedule.occurrences_after(after), count))


def local(moments: list[datetime], zone: ZoneInfo = BERLIN) -> list[str]:
    return [m.astimezone(zone).strftime("%m-%d %H:%M %Z") for m in moments]


# -- cron ----------------------------------------------------------------------------------


def test_cron_in_utc_fires_strictly_after_the_given_instant() -> None:
    schedule = cron("*/15 * * * *")
    assert first(schedule, utc(2026, 5, 1, 10, 0), 3) == [
        utc(2026, 5, 1, 10, 15),
        utc(2026, 5, 1, 10, 30),
        utc(2026, 5, 1, 10, 45),
    ]
    # An instant between two occurrences, with microseconds.
    after = utc(2026, 5, 1, 10, 14, 59) + timedelta(microseconds=999_999)
    assert first(schedule, after, 1) == [utc(2026, 5, 1, 10, 15)]


def test_cron_weekdays_in_a_zone() -> None:
    schedule = cron("0 7 * * mon-fri", BERLIN)
    # Friday 2026-12-04 08:00 Berlin: the next ones are Monday to Friday of next week.
    found = first(schedule, utc(2026, 12, 4, 7, 0), 5)
    assert local(found) == [f"12-{d:02d} 07:00 CET" for d in range(7, 12)]
    assert found[0] == utc(2026, 12, 7, 6, 0)


@pytest.mark.parametrize(
    ("nickname", "fields"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@DAILY", "0 0 * * *"),
    ],
)
def test_cron_nicknames(nickname: str, fields: str) -> None:
    after = utc(2026, 2, 10, 13, 30)
    assert first(cron(nickname), after, 3) == first(cron(fields), after, 3)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "five fields"),
        ("0 0 * * * *", "five fields"),
        ("61 * * * *", "not valid"),
        ("0 0 31 2 *", "not valid"),
        ("@fortnightly", "unknown cron nickname"),
        ("", "cron expression"),
    ],
)
def test_bad_cron_is_refused_naming_it(expression: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        CronTrigger(expression, None)


def test_unknown_zone_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="unknown time zone 'Mars/Olympus'"):
        parse_zone("Mars/Olympus")
    assert parse_zone(None) is None
    assert parse_zone("Europe/Berlin") == BERLIN


# -- daylight saving time (Europe/Berlin, 2026) ------------------------------------------


def test_spring_forward_gap_fixed_time_runs_right_after_the_gap() -> None:
    # 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
    found = first(cron("30 2 * * *", BERLIN), utc(2026, 3, 28, 12), 3)
    assert local(found) == ["03-29 03:00 CEST", "03-30 02:30 CEST", "03-31 02:30 CEST"]
    assert found[0] == utc(2026, 3, 29, 1, 0)


def test_spring_forward_gap_wildcard_hours_skip_the_missing_hour() -> None:
    found = first(cron("*/30 * * * *", BERLIN), utc(2026, 3, 29, 0, 0), 3)
    assert local(found) == ["03-29 01:30 CET", "03-29 03:00 CEST", "03-29 03:30 CEST"]
    # One hour of elapsed time between 01:30 CET and 03:30 CEST: nothing was lost.
    assert found[2] - found[0] == timedelta(hours=1)


def test_fall_back_repeat_fixed_time_runs_once() -> None:
    # 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    found = first(cron("30 2 * * *", BERLIN), utc(2026, 10, 24, 12), 2)
    assert local(found) == ["10-25 02:30 CEST", "10-26 02:30 CET"]
    # Asked from inside the second pass of the repeated hour: no going back in time.
    assert first(cron("30 2 * * *", BERLIN), utc(2026, 10, 25, 1, 10), 1) == [
        utc(2026, 10, 26, 1, 30)
    ]


def test_fall_back_repeat_wildcard_hours_run_in_both_passes() -> None:
    found = first(cron("*/30 * * * *", BERLIN), utc(2026, 10, 24, 23, 45), 5)
    assert local(found) == [
        "10-25 02:00 CEST",
        "10-25 02:30 CEST",
        "10-25 02:00 CET",
        "10-25 02:30 CET",
        "10-25 03:00 CET",
    ]
    assert all(b - a == timedelta(minutes=30) for a, b in pairwise(found))


def test_every_ignores_daylight_saving_time() -> None:
    schedule = Schedule("s", "job", EveryTrigger(timedelta(hours=1), BERLIN), [], {})
    found = first(schedule, utc(2026, 10, 24, 23, 30), 4)
    assert all(b - a == timedelta(hours=1) for a, b in pairwise(found))
    assert local(found) == [
        "10-25 02:00 CEST",
        "10-25 02:00 CET",
        "10-25 03:00 CET",
        "10-25 04:00 CET",
    ]


# -- every ---------------------------------------------------------------------------------


def test_every_is_aligned_on_the_epoch_so_every_process_agrees() -> None:
    schedule = every(2)
    assert first(schedule, utc(2026, 1, 1, 0, 0, 1) + timedelta(microseconds=5), 3) == [
        utc(2026, 1, 1, 0, 0, 2),
        utc(2026, 1, 1, 0, 0, 4),
        utc(2026, 1, 1, 0, 0, 6),
    ]
    assert first(schedule, utc(2026, 1, 1, 0, 0, 2), 1) == [utc(2026, 1, 1, 0, 0, 4)]
    assert first(every(1), utc(2026, 1, 1), 2) == [
        utc(2026, 1, 1, 0, 0, 1),
        utc(2026, 1, 1, 0, 0, 2),
    ]


@pytest.mark.parametrize(
    "value", [timedelta(0), timedelta(milliseconds=500), timedelta(seconds=1.5), 30]
)
def test_every_must_be_whole_seconds_of_at_least_one(value: Any) -> None:
    with pytest.raises(ConfigurationError, match="every must be"):
        EveryTrigger(value, None)


# -- jids and payloads ---------------------------------------------------------------------


def test_payload_is_identical_for_the_same_occurrence_and_marks_custom() -> None:
    schedule = Schedule(
        "report-eu",
        "send_report",
        CronTrigger("0 7 * * *", BERLIN),
        [42],
        {"queue": "low", "retry": 3, "custom": {"team": "ops"}},
    )
    occurrence = utc(2026, 6, 1, 5, 0)
    payload = schedule.payload(occurrence)
    assert payload == schedule.payload(occurrence)
    assert payload["jid"] == f"report-eu@20260601T050000Z~{schedule.digest}"
    assert len(payload["jid"]) >= 8
    assert payload["at"] == payload["created_at"] == "2026-06-01T05:00:00.000000Z"
    assert payload["args"] == [42]
    assert (payload["queue"], payload["retry"], payload["jobtype"]) == ("low", 3, "send_report")
    assert payload["custom"] == {
        "team": "ops",
        CUSTOM_KEY: {"schedule": "report-eu", "occurrence": "2026-06-01T05:00:00.000000Z"},
    }
    assert schedule.payload(occurrence + timedelta(days=1))["jid"] != payload["jid"]


def test_a_changed_definition_changes_the_jids() -> None:
    base = Schedule("s", "job", CronTrigger("0 * * * *", None), [1], {"queue": "q"})
    digests = {
        base.digest,
        Schedule("s", "job", CronTrigger("0 * * * *", None), [2], {"queue": "q"}).digest,
        Schedule("s", "job", CronTrigger("5 * * * *", None), [1], {"queue": "q"}).digest,
        Schedule("s", "job", CronTrigger("0 * * * *", BERLIN), [1], {"queue": "q"}).digest,
        Schedule("s", "job", CronTrigger("0 * * * *", None), [1], {"queue": "r"}).digest,
        Schedule("s", "other", CronTrigger("0 * * * *", None), [1], {"queue": "q"}).digest,
    }
    assert len(digests) == 6
    # The same definition written differently (spacing, nickname) is the same schedule.
    assert (
        Schedule("s", "job", CronTrigger("@hourly", None), [1], {"queue": "q"}).digest
        == base.digest
    )
    assert (
        Schedule("s", "job", CronTrigger(" 0  * * * * ", None), [1], {"queue": "q"}).digest
        == base.digest
    )


def test_schedule_refuses_a_bad_name_and_the_reserved_custom_key() -> None:
    trigger = EveryTrigger(timedelta(seconds=5), None)
    with pytest.raises(ConfigurationError, match="periodic name 'a b'"):
        Schedule("a b", "job", trigger, [])
    with pytest.raises(ConfigurationError, match="custom key 'periodic' is reserved"):
        Schedule("s", "job", trigger, [], {"custom": {CUSTOM_KEY: 1}})


# -- the window: look-ahead, margin, catch-up -------------------------------------------------


def test_plan_pushes_what_is_inside_the_window_only() -> None:
    now = utc(2026, 1, 1, 12, 0, 0)
    step = plan(
        every(10),
        handled_until=now,
        now=now,
        lookahead=timedelta(seconds=60),
        margin=timedelta(seconds=5),
    )
    # 12:00:00 is not after the cursor; 12:00:10 .. 12:01:00 are inside [now+5 s, now+60 s].
    assert step.of(PUSH) == [now + timedelta(seconds=s) for s in range(10, 61, 10)]
    assert step.of(SKIP) == step.of(LATE) == []


def test_plan_skips_occurrences_closer_than_the_margin_or_past() -> None:
    now = utc(2026, 1, 1, 12, 0, 0)
    # The cursor is 30 s behind (a stall): 11:59:40, 11:59:50, 12:00:00 are past,
    # 12:00:02 .. 12:00:04 closer than the 5 s margin; 12:00:06 on are pushed.
    step = plan(
        every(2),
        handled_until=now - timedelta(seconds=21),
        now=now,
        lookahead=timedelta(seconds=10),
        margin=timedelta(seconds=5),
    )
    assert step.of(SKIP) == [now + timedelta(seconds=s) for s in range(-20, 5, 2)]
    assert step.of(PUSH) == [now + timedelta(seconds=s) for s in (6, 8, 10)]
    assert [o for o, _ in step.steps] == sorted(o for o, _ in step.steps)


def test_plan_with_catch_up_pushes_the_missed_ones_late() -> None:
    now = utc(2026, 1, 1, 12, 0, 0)
    step = plan(
        every(2, catch_up=True),
        handled_until=now - timedelta(seconds=5),
        now=now,
        lookahead=timedelta(seconds=8),
        margin=timedelta(seconds=3),
    )
    assert step.of(LATE) == [now + timedelta(seconds=s) for s in (-4, -2, 0, 2)]
    assert step.of(PUSH) == [now + timedelta(seconds=s) for s in (4, 6, 8)]
    assert step.of(SKIP) == []


def test_plan_after_the_horizon_is_left_for_later_ticks() -> None:
    now = utc(2026, 1, 1, 12, 0, 0)
    schedule = cron("0 7 * * *")
    assert plan(schedule, handled_until=now, now=now).steps == []
    # A tick 60 s before the next 07:00 sees it; a tick 4 s before skips it.
    seven = utc(2026, 1, 2, 7, 0)
    assert plan(schedule, handled_until=now, now=seven - timedelta(seconds=60)).of(PUSH) == [seven]
    assert plan(schedule, handled_until=now, now=seven - timedelta(seconds=4)).of(SKIP) == [seven]
