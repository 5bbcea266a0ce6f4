"""Middleware that holds a connection pool, and a ContextProvider job that uses it.

Run it with ``python examples/middleware_pool.py``. The pattern, as in faktory-worker for
Node:

- a middleware lends each job a database connection from a pool (``ctx.db``) and takes
  it back when the job is done, whatever happened;
- the job function does not touch the database itself: it returns a function (a
  *ContextProvider*) that the worker calls with the job context, so it gets ``ctx.db``;
- a second, async middleware times every job, to show both kinds side by side.

The "database" is SQLite in a temporary file, so the example needs nothing installed.
"""

from __future__ import annotations

import queue
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _server import faktory_url, stopwatch

from kaffi import App, JobContext

say = stopwatch()
PAGES = ["/", "/pricing", "/docs", "/", "/blog", "/"]


class ConnectionPool:
    """A fixed set of SQLite connections handed out one per job."""

    def __init__(self, path: Path, size: int) -> None:
        self._idle: queue.Queue[sqlite3.Connection] = queue.Queue()
        for _ in range(size):
            # The worker runs plain jobs in threads: a connection moves between them, but
            # only one job uses it at a time.
            self._idle.put(sqlite3.connect(path, check_same_thread=False, timeout=10))
        self.lent = 0

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        conn = self._idle.get(timeout=10)
        self.lent += 1
        try:
            yield conn
        finally:
            self._idle.put(conn)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


def build_app(url: str, pool: ConnectionPool, timings: list[float]) -> App:
    """An App whose middleware lends a pooled connection to each job and times it."""
    app = App(url)

    def with_connection(ctx: JobContext, next: Callable[[], None]) -> None:
        with pool.connection() as conn:
            ctx.db = conn
            next()
            conn.commit()

    async def timing(ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
        started = time.perf_counter()
        try:
            await next()
        finally:
            timings.append(time.perf_counter() - started)

    app.use(timing)
    app.use(with_connection)

    @app.task
    def record_visit(page: str) -> Callable[[JobContext], Any]:
        def provider(ctx: JobContext) -> None:
            ctx.db.execute("insert into visits (page) values (?)", (page,))

        return provider

    return app


def main() -> None:
    """Push a few visits, run a burst worker and show what the pool and middleware saw."""
    with tempfile.TemporaryDirectory(prefix="kaffi-example-") as tmp, faktory_url() as url:
        path = Path(tmp) / "visits.db"
        with sqlite3.connect(path) as setup:
            setup.execute("create table visits (page text not null)")
        setup.close()
        pool = ConnectionPool(path, size=3)
        timings: list[float] = []
        app = build_app(url, pool, timings)
        record_visit = app.tasks["record_visit"]
        for page in PAGES:
            record_visit.delay(page)
        say(f"pushed {len(PAGES)} record_visit jobs")

        app.worker(concurrency=3, burst=True).work()
        say(f"burst worker done: the pool lent {pool.lent} connections, one per job")
        say(f"timing middleware saw {len(timings)} jobs, slowest {max(timings) * 1000:.1f} ms")
        with sqlite3.connect(path) as check:
            rows = check.execute(
                "select page, count(*) from visits group by page order by count(*) desc, page"
            ).fetchall()
        check.close()
        for page, count in rows:
            say(f"  {page:<10} {count} visit{'s' if count != 1 else ''}")
        pool.close()
        app.close()
        if sum(count for _, count in rows) != len(PAGES):
            raise SystemExit(f"expected {len(PAGES)} visits in the database, found {rows}")


if __name__ == "__main__":
    main()
