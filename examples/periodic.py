"""Periodic jobs with two schedulers and no duplicates.

Run it with ``python examples/periodic.py``. Unless FAKTORY_URL is set, an embedded
Faktory-compatible server starts inside this process and stops with it.

The app registers two schedules: ``heartbeat`` every 2 seconds and ``nightly_report`` at
02:30 in Berlin (shown, not waited for). Two schedulers run at once, as two
``kaffi beat`` processes would for availability: each pushes every occurrence ahead of
time with the same jid, ``created_at`` and ``at``, and the server keeps one job per
occurrence. A worker runs them; the script stops after four heartbeats, about ten
seconds, and checks that each ran once.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

from _server import faktory_url, stopwatch, wait_until

from kaffi import App, current_job
from kaffi.periodic import Beat, upcoming

say = stopwatch()
runs: Counter[str] = Counter()
HEARTBEATS = 4


def build_app(url: str) -> App:
    """A heartbeat every 2 s and a report at 02:30 Berlin time."""
    app = App(url)

    @app.task
    def heartbeat(service: str) -> None:
        occurrence = (current_job().custom or {})["periodic"]["occurrence"]
        runs[occurrence] += 1
        say(f"heartbeat({service!r}) for {occurrence}   jid {current_job().jid}")

    @app.task
    def nightly_report(account: int) -> None:
        say(f"nightly_report({account})")

    app.periodic(heartbeat, every=timedelta(seconds=2), args=("billing",))
    app.periodic(nightly_report, cron="30 2 * * *", tz="Europe/Berlin", args=(42,))
    return app


def main() -> None:
    """Show the schedules, run two schedulers and a worker until four heartbeats ran."""
    logging.basicConfig(level=logging.WARNING)
    with faktory_url() as url:
        say(f"Faktory server at {url}")
        app = build_app(url)
        report = app.periodic_schedules["nightly_report"]
        first_night = upcoming(report, datetime.now(timezone.utc), count=1)[0]
        say(f"nightly_report next runs at {first_night.astimezone(report.zone):%Y-%m-%d %H:%M %Z}")

        # Two schedulers (threads here; separate `kaffi beat` processes in production).
        stop = threading.Event()
        schedulers = [
            threading.Thread(
                target=Beat(app, lookahead=timedelta(seconds=6), margin=timedelta(seconds=1)).run,
                args=(stop,),
                name=f"beat-{n}",
            )
            for n in (1, 2)
        ]
        worker = app.worker(concurrency=2)
        working = threading.Thread(target=worker.work, name="kaffi-worker")
        for thread in (*schedulers, working):
            thread.start()
        say("two schedulers and a worker started")
        try:
            wait_until(lambda: len(runs) >= HEARTBEATS, timeout=40, what="four heartbeats")
        finally:
            stop.set()
            worker.stop(timeout=15)
            for thread in (*schedulers, working):
                thread.join(timeout=15)
        app.close()
    verdict = "each ran once" if all(n == 1 for n in runs.values()) else "DUPLICATES"
    say(f"{len(runs)} heartbeats, {sum(runs.values())} runs: {verdict}")
    say("server stopped, bye")


if __name__ == "__main__":
    main()
