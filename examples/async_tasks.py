"""``async def`` tasks: many slow I/O jobs overlap on one worker's event loop.

Run it with ``python examples/async_tasks.py``. Twenty jobs each "download" a page
(``asyncio.sleep(0.5)`` stands in for the network). One worker process with
``concurrency=20`` holds all of them at once, so they are all done about half a second
after the worker starts, rather than ten. The worker runs inside this script's own event loop
(``await worker.run()``) in burst mode: it returns once the queue is empty and nothing
is running.
"""

from __future__ import annotations

import asyncio
import time

from _server import faktory_url, stopwatch

from kaffi import App

say = stopwatch()
PAGES = 20


def build_app(url: str, pages_done: list[float]) -> App:
    """An App with one async task that sleeps as an HTTP call would and notes when it ended."""
    app = App(url)

    @app.task(queue="crawl")
    async def download(page: int, delay: float = 0.5) -> None:
        await asyncio.sleep(delay)  # a real task would await an HTTP client here
        pages_done.append(time.monotonic())  # when this page finished

    return app


async def run(url: str) -> None:
    """Push the jobs with delay_async, then run a burst worker in this event loop."""
    pages_done: list[float] = []
    app = build_app(url, pages_done)
    download = app.tasks["download"]
    for page in range(PAGES):
        await download.delay_async(page)
    say(f"pushed {PAGES} download jobs with delay_async")

    worker = app.worker(queues=["crawl"], concurrency=PAGES, burst=True)
    started = time.monotonic()
    await worker.run()
    elapsed = max(pages_done) - started
    say(
        f"worker ran {len(pages_done)} pages, the last one done {elapsed:.2f} s after the worker "
        f"started (each sleeps 0.5 s: one after another they would take {PAGES * 0.5:.0f} s)"
    )
    say("burst mode then saw the queue stay empty and the worker returned")
    await app.aclose()
    if len(pages_done) != PAGES:
        raise SystemExit(f"expected {PAGES} pages, got {len(pages_done)}")


def main() -> None:
    """Run the example against FAKTORY_URL or an embedded server."""
    with faktory_url() as url:
        asyncio.run(run(url))


if __name__ == "__main__":
    main()
