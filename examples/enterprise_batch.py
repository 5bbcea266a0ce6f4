"""Faktory Enterprise batches and progress tracking: a nightly import in one file.

Run it with ``python examples/enterprise_batch.py``. Unless FAKTORY_URL is set, it starts
kaffi's embedded server with the Enterprise features inside this process (what
``kaffi server --enterprise`` runs); with FAKTORY_URL set, point it at
``kaffi server --enterprise`` or at a real Faktory Enterprise.

- One batch holds the night's jobs: an ``import_file`` job per file and one long
  ``build_index`` job. Its ``complete`` callback (``cleanup``) runs once every job has
  run; its ``success`` callback (``report``) runs after that, because every job succeeded.
- ``build_index`` is a ``track=True`` task: it reports its progress with
  ``current_job().track(...)``, extending its reservation as it goes, and when it is
  done it adds a ``verify_index`` job to its own batch (``current_job().batch.add``).
- Meanwhile the script follows the long job with ``app.progress(jid)`` (TRACK GET) and
  the batch with ``app.batch_status(bid)`` (BATCH STATUS) until the success callback ran.

It stops by itself after a few seconds.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from _server import faktory_url, stopwatch, wait_until

from kaffi import App, CallbackState, current_job

say = stopwatch()

FILES = {"customers.csv": 120, "orders.csv": 300, "products.csv": 45}
STEPS = ("reading rows", "sorting keys", "writing the index")

#: Set when the success callback has run: the script's signal to stop.
reported = threading.Event()


def build_app(url: str) -> App:
    """The import's tasks: the batch's jobs, the long tracked job and the two callbacks."""
    app = App(url)

    @app.task
    def import_file(name: str, rows: int) -> None:
        say(f"import_file({name!r}) imported {rows} rows   (batch {current_job().bid})")

    @app.task(track=True, reserve_for=60)
    def build_index(rows: int) -> None:
        job = current_job()
        for number, step in enumerate(STEPS):
            # reserve_until: a long job keeps its reservation past reserve_for, so
            # Faktory does not hand it to another worker meanwhile.
            job.track(
                percent=100 * number // len(STEPS),
                desc=step,
                reserve_until=timedelta(minutes=10),
            )
            time.sleep(0.4)  # stands in for the real work on `rows` rows
        job.track(percent=100, desc="done")
        jid = job.batch.add(verify_index.job(rows))
        say(f"build_index({rows}) added verify_index to its own batch (jid {jid})")

    @app.task
    def verify_index(rows: int) -> None:
        say(f"verify_index({rows}) checked the index   (batch {current_job().bid})")

    @app.task
    def cleanup() -> None:
        say(f"cleanup: every job of batch {current_job().callback_bid} ran (complete callback)")

    @app.task
    def report(title: str) -> None:
        bid = current_job().callback_bid
        assert bid is not None
        status = app.batch_status(bid)
        say(
            f"report: {title!r} succeeded, {status.total} jobs, {status.failed} failed"
            " (success callback)"
        )
        reported.set()

    return app


def follow(app: App, jid: str, bid: str) -> None:
    """Print the long job's progress each time it changes, until the batch's success
    callback has run."""
    seen = None
    deadline = time.monotonic() + 30
    while not reported.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the batch did not succeed within 30 s")
        progress = app.progress(jid)
        now = (progress.state, progress.percent, progress.desc)
        if now != seen:
            shown = [progress.state]
            if progress.percent is not None:
                shown.append(f"{progress.percent}%")
            if progress.desc:
                shown.append(progress.desc)
            say(f"progress of build_index: {' '.join(shown)}")
            seen = now
        time.sleep(0.05)
    wait_until(
        lambda: app.batch_status(bid).success is CallbackState.DONE,
        timeout=10,
        what="the success callback's ACK",
    )
    final = app.progress(jid)
    say(f"progress of build_index: {final.state} {final.percent}% {final.desc}")


def main() -> None:
    """Start a server, build and commit the batch, run a worker until it succeeded."""
    with faktory_url(enterprise=True) as url:
        say(f"Faktory Enterprise server at {url}")
        app = build_app(url)
        import_file, build_index, report, cleanup = (
            app.tasks[name] for name in ("import_file", "build_index", "report", "cleanup")
        )
        with app.batch(
            description="nightly import",
            success=report.job("nightly import"),
            complete=cleanup.job(),
        ) as batch:
            for name, rows in FILES.items():
                import_file.delay(name, rows)  # each carries custom.bid
            index_jid = build_index.delay(sum(FILES.values()))
        assert batch.bid is not None
        assert index_jid is not None  # None only when a push middleware drops a job
        say(f"committed: {app.batch_status(batch.bid)}")

        worker = app.worker(concurrency=4)
        thread = threading.Thread(target=worker.work, name="kaffi-worker")
        thread.start()
        try:
            follow(app, index_jid, batch.bid)
        finally:
            worker.stop(timeout=15)
            thread.join(timeout=15)
        say(f"finished: {app.batch_status(batch.bid)}")
        app.close()
    say("server stopped, bye")


if __name__ == "__main__":
    main()
