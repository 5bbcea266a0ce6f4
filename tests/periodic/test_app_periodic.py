"""app.periodic(...): registration, validation, and what a periodic job looks like to a job."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from kaffi import App
from kaffi.errors import ConfigurationError, ValidationError
from kaffi.periodic.schedule import CronTrigger, EveryTrigger


def make_app() -> App:
    app = App("tcp://127.0.0.1:1")

    @app.task(queue="reports", retry=5, custom={"team": "ops"})
    def send_report(account: int, region: str = "eu") -> None:
        """A task with typed arguments."""

    @app.task
    def cleanup() -> None:
        """A task without arguments."""

    return app


def test_registers_schedules_with_validated_arguments_and_task_options() -> None:
    app = make_app()
    report = app.periodic(
        app.tasks["send_report"], cron="0 7 * * mon-fri", tz="Europe/Berlin", args=(42,)
    )
    tidy = app.periodic("cleanup", every=timedelta(seconds=30))
    sync = app.periodic(
        app.tasks["send_report"],
        cron="*/5 * * * *",
        name="sync-eu",
        queue="low",
        kwargs={"account": 7, "region": "us"},
    )
    assert list(app.periodic_schedules) == ["send_report", "cleanup", "sync-eu"]
    assert report.args == [42]
    assert report.job["queue"] == "reports"
    assert report.job["retry"] == 5
    assert report.job["custom"] == {"team": "ops"}
    assert isinstance(report.trigger, CronTrigger)
    assert report.zone is not None
    assert report.zone.key == "Europe/Berlin"
    assert isinstance(tidy.trigger, EveryTrigger)
    assert tidy.trigger.seconds == 30
    assert sync.args == [7, "us"]
    assert sync.job["queue"] == "low"
    for schedule in (report, tidy, sync):
        assert "jid" not in schedule.job
        assert "at" not in schedule.job


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"args": ("not a number",)}, ValidationError, "account"),
        ({"args": ()}, ValidationError, "account"),
        ({"args": (1, "eu", "extra")}, ValidationError, "periodic: task .* 3 were given$"),
        ({"args": (1,), "queue": "bad queue!"}, ValidationError, "queue"),
    ],
)
def test_arguments_and_options_are_validated_at_registration(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    app = make_app()
    with pytest.raises(error, match=message):
        app.periodic(app.tasks["send_report"], every=timedelta(minutes=1), **kwargs)
    assert app.periodic_schedules == {}


def test_exactly_one_trigger_unique_names_and_known_tasks() -> None:
    app = make_app()
    cleanup = app.tasks["cleanup"]
    with pytest.raises(ConfigurationError, match="exactly one of cron= or every="):
        app.periodic(cleanup)
    with pytest.raises(ConfigurationError, match="exactly one of cron= or every="):
        app.periodic(cleanup, cron="@hourly", every=timedelta(seconds=5))
    app.periodic(cleanup, cron="@hourly")
    with pytest.raises(ConfigurationError, match="'cleanup' is already registered"):
        app.periodic(cleanup, every=timedelta(seconds=5))
    app.periodic(cleanup, every=timedelta(seconds=5), name="cleanup-often")
    with pytest.raises(ConfigurationError, match="no task is registered as 'nope'"):
        app.periodic("nope", cron="@daily")
    other = make_app()
    with pytest.raises(ConfigurationError, match="not a task of this App"):
        app.periodic(other.tasks["cleanup"], cron="@daily", name="x")
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        app.periodic(cleanup, cron="@daily", tz="Europe/Atlantis", name="y")
    with pytest.raises(ConfigurationError, match="every must be"):
        app.periodic(cleanup, every=timedelta(milliseconds=10), name="z")
    assert list(app.periodic_schedules) == ["cleanup", "cleanup-often"]


def test_a_task_with_its_own_countdown_cannot_be_periodic() -> None:
    app = make_app()
    delayed = app.tasks["cleanup"].options(countdown=5)
    with pytest.raises(ConfigurationError, match="countdown"):
        app.periodic(delayed, every=timedelta(seconds=5))
