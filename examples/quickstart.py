"""kaffi in one file: define tasks, enqueue them, run a worker, watch what happens.

Run it with ``python examples/quickstart.py``. It needs nothing but kaffi: unless
FAKTORY_URL is set, an embedded Faktory-compatible server starts inside this process
and stops with it. Four jobs are pushed:

- ``add``: a plain function (the worker runs it in a thread);
- ``fetch_title``: an ``async def`` task (it runs on the worker's event loop);
- ``flaky``: raises on its first attempt. Faktory puts it in the retries set and would
  bring it back after 15 to 44 seconds; the quickstart requeues it at once instead, with
  the same MUTATE command ``kaffi mutate retries requeue`` sends;
- ``remind``: scheduled three seconds ahead; it waits in the scheduled set until due.

Then the worker and the server stop and the script exits, after about five seconds.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from _server import faktory_url, stopwatch, wait_until

from kaffi import App, current_job

say = stopwatch()

#: Each task sets its event when it has run, so the script knows when to stop.
finished = {name: threading.Event() for name in ("add", "fetch_title", "flaky", "remind")}
flaky_attempts = 0


class SayHandler(logging.Handler):
    """Shows the worker's one log line per job (jid, outcome, duration) in our output.

    The traceback logged with a failed job is left out here to keep the demo short; it
    is what Faktory stores with the job (and what `kaffi worker` prints in full)."""

    def emit(self, record: logging.LogRecord) -> None:
        say(f"  worker log: {record.getMessage()}")


def show_worker_log() -> None:
    """Print the worker's one line per job, indented under the tasks' own output."""
    job_log = logging.getLogger("kaffi.job")
    job_log.addHandler(SayHandler())
    job_log.setLevel(logging.INFO)
    job_log.propagate = False


def build_app(url: str) -> App:
    """The four quickstart tasks: plain, async, failing once, scheduled."""
    app = App(url)

    @app.task
    def add(x: int, y: int) -> None:
        say(f"add({x}, {y}) = {x + y}   (a plain function, in a worker thread)")
        finished["add"].set()

    @app.task
    async def fetch_title(page: str) -> None:
        await asyncio.sleep(0.2)  # stands in for an HTTP request
        say(f"fetch_title({page!r}) done   (async def, on the worker's event loop)")
        finished["fetch_title"].set()

    @app.task(retry=3)
    def flaky(order_id: int) -> None:
        global flaky_attempts
        flaky_attempts += 1
        if flaky_attempts == 1:
            say(f"flaky({order_id}) attempt 1: raising ConnectionResetError")
            raise ConnectionResetError("the payment API hung up")
        say(f"flaky({order_id}) attempt {flaky_attempts}: succeeded")
        finished["flaky"].set()

    @app.task
    def remind(message: str) -> None:
        say(f"remind({message!r}) ran   (scheduled, jid {current_job().jid})")
        finished["remind"].set()

    return app


def main() -> None:
    """Start a server, push the tasks, run a worker until all four are done, stop."""
    with faktory_url() as url:
        say(f"Faktory server at {url}")
        show_worker_log()
        app = build_app(url)
        add, fetch_title, flaky, remind = (app.tasks[name] for name in finished)

        say(f"pushed add            jid {add.delay(2, 3)}")
        say(f"pushed fetch_title    jid {fetch_title.delay('https://example.com')}")
        flaky_jid = flaky.delay(1042)
        assert flaky_jid is not None  # None only when a push middleware drops a job
        say(f"pushed flaky          jid {flaky_jid}")
        say(f"pushed remind (in 3s) jid {remind.options(countdown=3).delay('stand up')}")

        worker = app.worker(concurrency=5)
        thread = threading.Thread(target=worker.work, name="kaffi-worker")
        thread.start()
        try:
            wait_until(
                lambda: app.client.info().faktory.sets.get("retries", 0) > 0,
                timeout=15,
                what="flaky to reach the retries set",
            )
            say("flaky failed and is in the retries set (Faktory would retry it in 15-44 s)")
            say("requeueing it now: app.mutate.retries.with_jids(jid).requeue()")
            app.mutate.retries.with_jids(flaky_jid).requeue()
            for name, event in finished.items():
                if not event.wait(timeout=15):
                    raise TimeoutError(f"{name} did not run within 15 s")
        finally:
            worker.stop(timeout=15)
            thread.join(timeout=15)
        info = app.client.info().faktory
        say(
            f"worker stopped; server totals: {info.total_processed} processed, "
            f"{info.total_failures} failed"
        )
        app.close()
    say("server stopped, bye")


if __name__ == "__main__":
    main()
