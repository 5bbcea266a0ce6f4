"""Durable storage for the embedded server: one SQLite file in WAL mode (standard library).

:class:`SqliteJournal` receives the core's changes (:class:`kaffi.server.core.Journal`)
and keeps them in memory until :meth:`SqliteJournal.commit`, which writes them all in one
transaction with ``executemany``. The network layer commits once per event-loop turn and
only then sends the replies of the commands it ran, so every ``+OK`` the server gave is on
disk. ``synchronous=NORMAL`` in WAL mode survives a killed process (the OS keeps the
written pages); it can lose the last transactions on a power cut, which is the trade-off
Faktory's Redis makes too.

Changes are merged by row id before writing (a job pushed and fetched in the same turn is
one row written once), and :meth:`SqliteJournal.load` feeds a fresh core at start.

The same transaction adds what the core processed and failed since the last commit to
that day's row of the ``daily`` table (UTC days, by the core's clock): the history the web
UI's dashboard shows (:meth:`SqliteJournal.daily`). Every change of those counters comes
with a job row change (ACK deletes a row, FAIL rewrites or deletes one), so the counters
ride on the commits that already happen.

In Enterprise mode the same transaction writes the Enterprise records that changed since
the last commit (unique locks, progress records, batches, the expired counter: one row per
record in the ``enterprise`` table, its value JSON), as the core's
:class:`~kaffi.server.enterprise.Enterprise` lists them; :meth:`SqliteJournal.load` gives
them back before the server answers anyone. A server started without ``--enterprise``
leaves those rows alone (FLUSH empties the table, as it empties everything).

Must never be used from two threads at once: the server's loop thread owns it.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kaffi.server.core import ServerCore
    from kaffi.server.enterprise import Enterprise

__all__ = ["SqliteJournal", "utc_day"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    rowid_ INTEGER PRIMARY KEY,
    jid TEXT NOT NULL,
    state TEXT NOT NULL,
    queue TEXT NOT NULL,
    score REAL NOT NULL,
    wid TEXT NOT NULL DEFAULT '',
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    paused INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS enterprise (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS daily (
    day TEXT PRIMARY KEY,
    processed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0
);
"""


def utc_day(seconds: float) -> str:
    """The UTC date of ``seconds`` since the epoch, as ``YYYY-MM-DD``."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).date().isoformat()


# A pending change of one row: a whole row, a move (state, score, wid), or a delete.
_Put = tuple[int, str, str, str, float, str, bytes]
_Move = tuple[str, float, str, int]


class SqliteJournal:
    """Buffered, merged writes of job rows to SQLite."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=0.5
        )
        try:
            # One server per file: an exclusive lock, taken now by a write, keeps a second
            # server on the same file from starting (it sees "database is locked").
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.close()
            raise
        self._puts: dict[int, _Put] = {}
        self._moves: dict[int, _Move] = {}
        self._deletes: set[int] = set()
        self._queues: dict[str, bool | None] = {}
        self._clear = False
        #: The core whose counters go into ``daily`` (set by :meth:`load`), and the values
        #: of its counters that are already written.
        self._core: ServerCore | None = None
        #: Its Enterprise state, in Enterprise mode.
        self._enterprise: Enterprise | None = None
        self._counted = (0, 0)
        #: Counts kept across a FLUSH that zeroed the core's counters before a commit.
        self._carried = (0, 0)

    # -- the Journal protocol -------------------------------------------------------------

    def put(
        self, rowid: int, jid: str, state: str, queue: str, score: float, data: bytes, wid: str
    ) -> None:
        """Buffer a new or rewritten job row until :meth:`commit`."""
        self._deletes.discard(rowid)
        self._moves.pop(rowid, None)
        self._puts[rowid] = (rowid, jid, state, queue, score, wid, data)

    def move(self, rowid: int, state: str, score: float, wid: str) -> None:
        """Buffer a change of state of a job row until :meth:`commit`."""
        put = self._puts.get(rowid)
        if put is not None:
            self._puts[rowid] = (rowid, put[1], state, put[3], score, wid, put[6])
        else:
            self._moves[rowid] = (state, score, wid, rowid)

    def delete(self, rowid: int) -> None:
        """Buffer the removal of a job row until :meth:`commit`."""
        self._puts.pop(rowid, None)
        self._moves.pop(rowid, None)
        self._deletes.add(rowid)

    def clear(self) -> None:
        """Buffer the removal of every job row (FLUSH) until :meth:`commit`."""
        self._puts.clear()
        self._moves.clear()
        self._deletes.clear()
        self._clear = True
        # The core zeroes its counters next: keep what they held that is not written yet.
        processed, failed = self._uncounted()
        self._carried = (self._carried[0] + processed, self._carried[1] + failed)
        self._counted = (0, 0)

    def queue(self, name: str, paused: bool | None) -> None:
        """Buffer a queue's paused flag (None: the queue was removed) until :meth:`commit`."""
        self._queues[name] = paused

    # -- writing and reading --------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """True when changes wait for :meth:`commit`."""
        return bool(
            self._puts
            or self._moves
            or self._deletes
            or self._queues
            or self._clear
            or self._uncounted() != (0, 0)
            or (self._enterprise is not None and self._enterprise.has_changes)
        )

    def _uncounted(self) -> tuple[int, int]:
        """Processed and failed jobs of the core not yet added to ``daily``."""
        core = self._core
        if core is None:
            return (0, 0)
        processed, failed = core.total_processed, core.total_failures
        if processed < self._counted[0] or failed < self._counted[1]:
            # FLUSH zeroed the core's counters: everything it shows now is new.
            self._counted = (0, 0)
        return (
            processed - self._counted[0] + self._carried[0],
            failed - self._counted[1] + self._carried[1],
        )

    def commit(self) -> None:
        """Write every buffered change in one transaction."""
        if not self.pending:
            return
        db = self._db
        db.execute("BEGIN")
        try:
            if self._clear:
                db.execute("DELETE FROM jobs")
                db.execute("DELETE FROM enterprise")
            if self._deletes:
                db.executemany("DELETE FROM jobs WHERE rowid_ = ?", [(r,) for r in self._deletes])
            if self._puts:
                db.executemany(
                    "INSERT OR REPLACE INTO jobs (rowid_, jid, state, queue, score, wid, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    list(self._puts.values()),
                )
            if self._moves:
                db.executemany(
                    "UPDATE jobs SET state = ?, score = ?, wid = ? WHERE rowid_ = ?",
                    list(self._moves.values()),
                )
            for name, paused in self._queues.items():
                if paused is None:
                    db.execute("DELETE FROM queues WHERE name = ?", (name,))
                else:
                    db.execute(
                        "INSERT INTO queues (name, paused) VALUES (?, ?) "
                        "ON CONFLICT(name) DO UPDATE SET paused = excluded.paused",
                        (name, int(paused)),
                    )
            processed, failed = self._uncounted()
            if (processed or failed) and self._core is not None:
                db.execute(
                    "INSERT INTO daily (day, processed, failed) VALUES (?, ?, ?) "
                    "ON CONFLICT(day) DO UPDATE SET processed = processed + excluded.processed, "
                    "failed = failed + excluded.failed",
                    (utc_day(self._core.clock.now()), processed, failed),
                )
            if self._enterprise is not None and self._enterprise.has_changes:
                self._write_enterprise(self._enterprise.changes())
            if self._core is not None and (processed or failed or self._clear):
                # The totals INFO reports, so a restart does not zero them.
                db.executemany(
                    "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                    [
                        ("total_processed", self._core.total_processed),
                        ("total_failures", self._core.total_failures),
                    ],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._puts.clear()
        self._moves.clear()
        self._deletes.clear()
        self._queues.clear()
        self._clear = False
        if self._core is not None:
            self._counted = (self._core.total_processed, self._core.total_failures)
        self._carried = (0, 0)
        if self._enterprise is not None:
            self._enterprise.changes_written()

    def _write_enterprise(self, changes: list[tuple[str, str, str | None]]) -> None:
        gone = [(kind, key) for kind, key, value in changes if value is None]
        kept = [(kind, key, value) for kind, key, value in changes if value is not None]
        if gone:
            self._db.executemany("DELETE FROM enterprise WHERE kind = ? AND key = ?", gone)
        if kept:
            self._db.executemany(
                "INSERT OR REPLACE INTO enterprise (kind, key, value) VALUES (?, ?, ?)", kept
            )

    def daily(self, days: int, now: float) -> list[tuple[str, int, int]]:
        """The last ``days`` UTC days up to the day of ``now``, oldest first, as
        ``(day, processed, failed)``; days without a row count zero."""
        if days < 1:
            raise ValueError(f"days must be at least 1, got {days}")
        last = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).date()
        wanted = [(last - datetime.timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]
        rows = {
            day: (processed, failed)
            for day, processed, failed in self._db.execute(
                "SELECT day, processed, failed FROM daily WHERE day >= ? AND day <= ?",
                (wanted[0], wanted[-1]),
            )
        }
        return [(day, *rows.get(day, (0, 0))) for day in wanted]

    def load(self, core: ServerCore) -> int:
        """Rebuild ``core`` from the file; returns how many job rows were read."""
        db = self._db
        for name, paused in db.execute("SELECT name, paused FROM queues ORDER BY name"):
            core.load_queue(name, bool(paused))
        count = 0
        max_rowid = 0
        min_pos = 0.0
        max_pos = 1.0
        rows = db.execute(
            "SELECT rowid_, jid, state, queue, score, data, wid FROM jobs "
            "ORDER BY state, queue, score"
        )
        for rowid, jid, state, queue, score, data, wid in rows:
            core.load_row(rowid, jid, state, queue, score, bytes(data), wid)
            count += 1
            max_rowid = max(max_rowid, rowid)
            if state == "queued":
                min_pos = min(min_pos, score)
                max_pos = max(max_pos, score)
        core.restore_counters(max_rowid, min_pos, max_pos)
        totals = dict(db.execute("SELECT name, value FROM counters"))
        core.total_processed = int(totals.get("total_processed", 0))
        core.total_failures = int(totals.get("total_failures", 0))
        self._core = core
        self._counted = (core.total_processed, core.total_failures)
        if core.enterprise is not None:
            for kind, key, value in db.execute("SELECT kind, key, value FROM enterprise"):
                core.enterprise.load(kind, key, value)
            core.enterprise.durable()
            self._enterprise = core.enterprise
        return count

    def close(self) -> None:
        """Commit what is buffered, then close the database (and its lock on the file)."""
        try:
            self.commit()
        finally:
            self._db.close()
