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

Must never be used from two threads at once: the server's loop thread owns it.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kaffi.server.core import ServerCore

__all__ = ["SqliteJournal"]

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
"""

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
        self._counters: tuple[int, int] | None = None
        self._clear = False

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

    def queue(self, name: str, paused: bool | None) -> None:
        """Buffer a queue's paused flag (None: the queue was removed) until :meth:`commit`."""
        self._queues[name] = paused

    def counters(self, processed: int, failures: int) -> None:
        """Buffer the processed and failed totals until :meth:`commit` (the last wins)."""
        self._counters = (processed, failures)

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
            or self._counters is not None
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
            if self._counters is not None:
                processed, failures = self._counters
                db.executemany(
                    "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                    [("total_processed", processed), ("total_failures", failures)],
                )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._puts.clear()
        self._moves.clear()
        self._deletes.clear()
        self._queues.clear()
        self._counters = None
        self._clear = False

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
        return count

    def close(self) -> None:
        """Commit what is buffered, then close the database (and its lock on the file)."""
        try:
            self.commit()
        finally:
            self._db.close()
