"""``kaffi beat APP``: push the periodic jobs of an App (:meth:`kaffi.App.periodic`).

The scheduler itself is :class:`kaffi.periodic.Beat`; this module reads the options,
sets up logging and signals, and prints ``--list``. ``kaffi worker APP --beat`` runs the
same scheduler in a thread next to the worker, through :func:`start_beat_thread`.
Heavy modules are imported inside the command, so ``kaffi --help`` stays fast.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kaffi.cli import main
from kaffi.cli.common import (
    connection_settings,
    fail,
    handle_errors,
    log_options,
    setting,
    url_option,
)

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.periodic import Beat

__all__ = ["beat", "beat_options", "make_beat", "start_beat_thread"]

BEAT_HELP = """Push the periodic jobs of APP (registered with app.periodic(...)).

APP is module:attribute (like myproj.tasks:app) or just a module holding exactly one
kaffi.App; the current directory is importable.

Each occurrence is pushed ahead of time, between --lookahead and --margin seconds before
it is due, as a scheduled job whose jid, created_at and at are the same in every
process: run as many schedulers as you like (for availability), Faktory keeps one job
per occurrence. An occurrence closer than the margin, or past, is skipped and counted
(never pushed late) unless its schedule has catch_up=True.

--list prints each schedule with its next five occurrences and exits (no server needed).
Signals: TERM/INT stop after the current tick, exit 0.
"""
LIST_HELP = "Print each schedule and its next five occurrences (its zone and UTC), then exit."
FROM_HELP = "With --list: the occurrences after this RFC 3339 instant instead of after now."
LOOKAHEAD_HELP = "Seconds before a periodic occurrence it is pushed at the earliest."
MARGIN_HELP = (
    "Seconds before a periodic occurrence it may still be pushed; closer, it is skipped (catch_up"
    " schedules push it late)."
)

_F = TypeVar("_F", bound=Callable[..., object])


def beat_options(command: _F) -> _F:
    """Add ``--lookahead`` and ``--margin`` (seconds) to a command."""
    seconds = click.FloatRange
    command = setting(
        "--margin", type=seconds(min=0), default=5.0, metavar="SECONDS", help=MARGIN_HELP
    )(command)
    return setting(
        "--lookahead", type=seconds(min=1), default=60.0, metavar="SECONDS", help=LOOKAHEAD_HELP
    )(command)


def make_beat(application: App, url: str | None, lookahead: float, margin: float) -> Beat:
    """A :class:`~kaffi.periodic.Beat` for the command line's options (``--url`` gives it a
    client of its own; otherwise it uses the App's)."""
    from kaffi.periodic import Beat

    client = None
    if url is not None:
        from kaffi.client import Client

        client = Client(settings=connection_settings(url))
    return Beat(
        application,
        lookahead=timedelta(seconds=lookahead),
        margin=timedelta(seconds=margin),
        client=client,
    )


def start_beat_thread(runner: Beat) -> Callable[[], None]:
    """Run ``runner`` in a thread of its own; returns the function that stops it and waits
    for its current tick to end."""
    stop = threading.Event()
    # A daemon thread: a worker that leaves with os._exit or an error is not held up.
    thread = threading.Thread(target=runner.run, args=(stop,), name="kaffi-beat", daemon=True)
    thread.start()

    def stop_and_join() -> None:
        stop.set()
        thread.join(timeout=30)
        runner.close()

    return stop_and_join


@main.command("beat", help=BEAT_HELP)
@click.argument("app")
@url_option
@beat_options
@click.option("--list", "list_only", is_flag=True, help=LIST_HELP)
@click.option("--from", "from_", default=None, metavar="INSTANT", help=FROM_HELP)
@log_options
def beat(
    app: str,
    url: str | None,
    lookahead: float,
    margin: float,
    list_only: bool,
    from_: str | None,
    log_level: str,
    log_format: str,
) -> None:
    with handle_errors():
        from kaffi.worker.loader import load_app

        application = load_app(app)
        if list_only:
            print_schedules(application, _instant(from_) if from_ else datetime.now(timezone.utc))
            return
        if from_ is not None:
            fail("--from goes with --list")
        from kaffi.worker.joblog import configure_logging

        configure_logging(log_level, log_format)
        runner = make_beat(application, url, lookahead, margin)
        stop = threading.Event()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        # The main thread only waits on the event: a handler that sets it is enough.
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            runner.run(stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            runner.close()
            application.close()


def _instant(text: str) -> datetime:
    # The one RFC 3339 parser (the protocol's, as Faktory reads a job's time): a UTC
    # offset or Z is required, as in every timestamp on the wire.
    from kaffi.protocol.rfc3339 import RFC3339Error, parse_rfc3339

    try:
        return parse_rfc3339(text)
    except RFC3339Error:
        fail(
            f"--from {text!r} is not an RFC 3339 instant like 2026-03-29T00:00:00Z"
            " (with a UTC offset or Z)"
        )


def print_schedules(application: App, now: datetime) -> None:
    """Each schedule, then its next five occurrences in its zone and in UTC."""
    from kaffi.periodic import upcoming

    schedules = list(application.periodic_schedules.values())
    if not schedules:
        click.echo("no periodic schedules registered")
        return
    for schedule in schedules:
        queue = schedule.job.get("queue", "default")
        click.echo(f"{schedule.describe()}, queue {queue}")
        zone = schedule.zone or timezone.utc
        for occurrence in upcoming(schedule, now):
            local = occurrence.astimezone(zone)
            utc = occurrence.astimezone(timezone.utc)
            click.echo(
                f"  {local:%Y-%m-%d %H:%M:%S} {local.tzname()} ({local:%z})"
                f"   {utc:%Y-%m-%dT%H:%M:%SZ}"
            )
