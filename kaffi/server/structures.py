"""The data structures the server's state machine is built from, with no rules of their own.

:mod:`kaffi.server.core` owns what happens to jobs; this module owns how they are held,
chosen for speed and memory (100k queued jobs must stay small):

- :class:`Queue`: a ``deque`` of :class:`QueuedJob` tuples holding the job's encoded JSON,
  so FETCH hands out bytes without re-encoding;
- :class:`Reservation`: a job handed to a worker (the core keeps them in a ``dict`` by jid,
  plus a heap by expiry for the reaper);
- :class:`TimedSet`: the retry, scheduled and dead sets, a dict by row id plus a heap by
  time (entries removed from the dict are skipped when they reach the heap's top), and
  :func:`glob_to_regex`, the Redis ``SCAN MATCH`` glob that MUTATE filters them with;
- :class:`RegisteredWorker`, :class:`Waiter` (a blocked FETCH), :class:`ScannerStats`;
- :class:`Clock` (time the tests can move forward) and :class:`Journal` (the interface
  the SQLite store implements).

It must never do I/O, decide a job's fate, or import the rest of the server beyond the
job encoder's time format.
"""

from __future__ import annotations

import contextlib
import heapq
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from kaffi.server.jobs import time_string

__all__ = [
    "Clock",
    "Journal",
    "Queue",
    "QueuedJob",
    "RegisteredWorker",
    "Reservation",
    "ScannerStats",
    "TimedEntry",
    "TimedSet",
    "Waiter",
    "glob_to_regex",
]


class Clock:
    """Wall-clock time plus an offset that tests move forward (``advance``)."""

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Seconds since the epoch, moved forward by :meth:`advance`."""
        return time.time() + self.offset

    def now_ns(self) -> int:
        """Nanoseconds since the epoch, moved forward by :meth:`advance`."""
        return time.time_ns() + int(self.offset * 1e9)

    def now_string(self) -> str:
        """Now as Faktory writes times: RFC 3339 with nanoseconds, UTC."""
        return time_string(self.now_ns())

    def advance(self, seconds: float) -> None:
        """Move this clock forward (tests use it to make timers fall due)."""
        if seconds < 0:
            raise ValueError(f"the clock only moves forward, got {seconds} seconds")
        self.offset += seconds


class Journal(Protocol):
    """Where the core reports every change of a job row (see :mod:`kaffi.server.storage`)."""

    def put(
        self, rowid: int, jid: str, state: str, queue: str, score: float, data: bytes, wid: str
    ) -> None:
        """A job row was created or rewritten (its state, queue, time, body, owner)."""

    def move(self, rowid: int, state: str, score: float, wid: str) -> None:
        """A job row changed state (queued, reserved, retries...) without a new body."""

    def delete(self, rowid: int) -> None:
        """A job row is gone (acknowledged, discarded, dropped)."""

    def clear(self) -> None:
        """Every job row is gone (FLUSH); told before the core zeroes its counters."""

    def queue(self, name: str, paused: bool | None) -> None:
        """A queue is known (paused or not), or forgotten when ``paused`` is None."""


class QueuedJob(NamedTuple):
    """A job waiting in a queue: its row, jid, encoded JSON, enqueue time, reservation."""

    rowid: int
    jid: str
    data: bytes
    enqueued: float
    reserve_for: int


@dataclass(slots=True)
class Reservation:
    """A job handed to a worker and not yet ACKed or FAILed; it expires at ``expires``."""

    rowid: int
    jid: str
    data: bytes
    queue: str
    expires: float
    wid: str
    reserve_for: int


@dataclass(slots=True)
class RegisteredWorker:
    """A worker the server knows by its wid: from HELLO, kept fresh by BEAT."""

    wid: str
    hostname: str
    pid: int
    labels: list[str]
    started: float
    last_beat: float
    state: str = "running"
    rss_kb: int = 0
    connections: set[int] = field(default_factory=set)
    #: The connection that registered the wid first: the only one whose FETCH a quiet
    #: state blocks (Faktory keeps the state on that connection's client record).
    first_connection: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The worker as ``EmbeddedServer.workers()`` and ``KAFFI WORKERS`` show it."""
        return {
            "wid": self.wid,
            "hostname": self.hostname,
            "pid": self.pid,
            "labels": list(self.labels),
            "state": self.state,
            "rss_kb": self.rss_kb,
            "last_beat": self.last_beat,
            "connections": len(self.connections),
        }


@dataclass(slots=True, eq=False)
class Waiter:
    """A blocked FETCH: the core calls ``deliver`` with the job it reserved for it."""

    queues: list[str]
    wid: str
    deliver: Callable[[Reservation], None]
    alive: Callable[[], bool]
    #: Set once the FETCH has its job, or gave up, so that it is delivered to at most once.
    done: bool = False


@dataclass(slots=True)
class ScannerStats:
    """One background scanner's counters, as Faktory's ``scanner`` keeps them: how often
    it ran, how many jobs it moved and the wall time it spent (real time, whatever the
    core's clock says, since it measures the server's own work)."""

    cycles: int = 0
    enqueued: int = 0
    wall_time_ns: int = 0

    @contextlib.contextmanager
    def run(self) -> Iterator[ScannerStats]:
        """Count one run of the scanner and the time it takes; the body adds to
        ``enqueued`` for each job it moves."""
        start = time.perf_counter_ns()
        try:
            yield self
        finally:
            self.cycles += 1
            self.wall_time_ns += time.perf_counter_ns() - start

    def info(self, size: int) -> dict[str, int | float]:
        """The scanner's INFO entry, with ``size`` the size of the set it scans."""
        return {
            "cycles": self.cycles,
            "enqueued": self.enqueued,
            "size": size,
            "wall_time_sec": self.wall_time_ns / 1e9,
        }


class TimedEntry(NamedTuple):
    """A job in a :class:`TimedSet`: due (or dying) at ``score`` seconds since the epoch."""

    score: float
    rowid: int
    jid: str
    data: bytes


class TimedSet:
    """A set of jobs ordered by time: the retry, scheduled and dead sets.

    In Faktory each set is a Redis sorted set whose members are the jobs' JSON, so a set
    holds each identical payload once. ``indexed=True`` keeps an index from payload to
    row (:meth:`rowid_of`) so that a second PUSH of an identical scheduled job can be
    merged; the retry and dead sets, where identical payloads do not arise (each failure
    is stamped with its time), do without its memory.
    """

    __slots__ = ("_by_data", "_heap", "entries", "name")

    def __init__(self, name: str, *, indexed: bool = False) -> None:
        self.name = name
        self.entries: dict[int, TimedEntry] = {}
        self._by_data: dict[bytes, int] | None = {} if indexed else None
        self._heap: list[tuple[float, int]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: TimedEntry) -> None:
        """Put ``entry`` in the set (replacing a row of the same id)."""
        old = self.entries.get(entry.rowid)
        if old is not None:
            self._forget(old)
        self.entries[entry.rowid] = entry
        if self._by_data is not None:
            self._by_data[entry.data] = entry.rowid
        heapq.heappush(self._heap, (entry.score, entry.rowid))

    def rowid_of(self, data: bytes) -> int | None:
        """The row holding exactly these encoded bytes, or None (always None for a set
        built without ``indexed``)."""
        return None if self._by_data is None else self._by_data.get(data)

    def remove(self, rowid: int) -> TimedEntry | None:
        """Take row ``rowid`` out, returning it, or None if it is not here."""
        entry = self.entries.pop(rowid, None)
        if entry is not None:
            self._forget(entry)
        return entry

    def _forget(self, entry: TimedEntry) -> None:
        if self._by_data is not None and self._by_data.get(entry.data) == entry.rowid:
            del self._by_data[entry.data]

    def pop_due(self, now: float) -> Iterator[TimedEntry]:
        """Take out and yield, earliest first, every entry due at ``now`` or before."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            score, rowid = heapq.heappop(heap)
            entry = self.entries.get(rowid)
            if entry is not None and entry.score == score:
                del self.entries[rowid]
                self._forget(entry)
                yield entry
        if len(heap) > 2 * len(self.entries) + 64:
            # Removed entries linger in the heap; rebuild it before they dominate.
            self._heap = [(e.score, e.rowid) for e in self.entries.values()]
            heapq.heapify(self._heap)

    def clear(self) -> None:
        """Empty the set."""
        self.entries.clear()
        if self._by_data is not None:
            self._by_data.clear()
        self._heap.clear()


class Queue:
    """A named queue: its jobs in FIFO order and whether it is paused."""

    __slots__ = ("jobs", "name", "paused")

    def __init__(self, name: str, paused: bool = False) -> None:
        self.name = name
        self.jobs: deque[QueuedJob] = deque()
        self.paused = paused


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """A Redis SCAN ``MATCH`` glob (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\x``) as a regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            chars: list[str] = []
            while j < n and pattern[j] != "]":
                if pattern[j] == "\\" and j + 1 < n:
                    j += 1
                    chars.append(re.escape(pattern[j]))
                elif pattern[j] == "-" and chars and j + 1 < n and pattern[j + 1] != "]":
                    chars.append("-")
                else:
                    chars.append(re.escape(pattern[j]))
                j += 1
            if not chars:
                out.append("(?!)" if not negate else ".")
            else:
                out.append("[" + ("^" if negate else "") + "".join(chars) + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)
