"""The server's state machine: queues, reservations, the retry/scheduled/dead sets, workers.

:class:`ServerCore` is everything the embedded server *knows*, with no sockets and no
asyncio: commands call its methods, a timer calls :meth:`ServerCore.tick`, and both can be
driven from a plain test. Time comes from a :class:`Clock` that tests can move forward.

The structures it holds its state in (queues, reservations, the :class:`TimedSet` of
the retry/scheduled/dead sets, registered workers, blocked FETCHes) live in
:mod:`kaffi.server.structures`, chosen there for speed and memory; this module decides
what happens to jobs. Those names are re-exported here, where callers have always
imported them from.

Every change is also told to an optional :class:`Journal` (the SQLite store), by row id,
so a restart can rebuild this state. The core never waits for the journal: the network
layer commits the journal before it sends the replies of the commands it ran.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from kaffi.protocol.models import FAIL_ERRTYPE_MAX, FAIL_MESSAGE_MAX, MAX_BACKTRACE
from kaffi.server import info as info_mod
from kaffi.server import jobs as jobs_mod
from kaffi.server import mutate as mutate_mod
from kaffi.server import throttles as throttles_mod
from kaffi.server.enterprise import Enterprise
from kaffi.server.gocompat import trim_and_cut
from kaffi.server.jobs import encode_job, time_string
from kaffi.server.structures import (
    Clock,
    Journal,
    Queue,
    QueuedJob,
    RegisteredWorker,
    Reservation,
    ScannerStats,
    TimedEntry,
    TimedSet,
    Waiter,
    glob_to_regex,
)

__all__ = [
    "Clock",
    "Journal",
    "QueuedJob",
    "Queue",
    "Reservation",
    "ScannerStats",
    "TimedEntry",
    "TimedSet",
    "RegisteredWorker",
    "Waiter",
    "ServerCore",
    "CoreError",
    "glob_to_regex",
    "retry_delay",
    "STATE_QUEUED",
    "STATE_RESERVED",
    "STATE_RETRY",
    "STATE_SCHEDULED",
    "STATE_DEAD",
    "HEARTBEAT_EXPIRY",
    "DEAD_TTL",
]

STATE_QUEUED = "queued"
STATE_RESERVED = "reserved"
STATE_RETRY = "retries"
STATE_SCHEDULED = "scheduled"
STATE_DEAD = "dead"

#: A worker that has not sent BEAT for this long is forgotten (seconds).
HEARTBEAT_EXPIRY = 60.0
#: Dead jobs are kept this long (seconds): 180 days, like Faktory.
DEAD_TTL = 180 * 86400.0
_WORKER_STATES = {"running": 0, "quiet": 1, "terminate": 2}


class CoreError(Exception):
    """A command the core refuses; ``str(exc)`` is the ``-ERR`` text."""


def retry_delay(retry_count: int) -> float:
    """Faktory's backoff: ``count**4 + 15 + random(0..29) * (count + 1)`` seconds."""
    return float(retry_count**4 + 15 + random.randint(0, 29) * (retry_count + 1))


class ServerCore:
    """All the state of one server, and the operations the commands need."""

    def __init__(
        self,
        clock: Clock | None = None,
        journal: Journal | None = None,
        *,
        enterprise: bool = False,
        throttles: throttles_mod.Throttles | None = None,
    ) -> None:
        self.clock = clock or Clock()
        self.journal = journal
        #: The Faktory Enterprise features (``kaffi server --enterprise``), or None: then
        #: the server is the open-source Faktory and nothing reads ``custom``.
        self.enterprise = Enterprise(self.push) if enterprise else None
        #: Enterprise's queue throttles (``--throttles``), or None: no queue is throttled.
        self.throttles = throttles
        self.queues: dict[str, Queue] = {}
        self.reservations: dict[str, Reservation] = {}
        self._expiry_heap: list[tuple[float, int, str]] = []
        self.retries = TimedSet(STATE_RETRY)
        self.scheduled = TimedSet(STATE_SCHEDULED, indexed=True)
        self.dead = TimedSet(STATE_DEAD)
        self.workers: dict[str, RegisteredWorker] = {}
        #: The blocked FETCHes by queue name, oldest first (see add_waiter).
        self.waiters: dict[str, deque[Waiter]] = {}
        self._next_rowid = 1
        self._back = 1.0
        self._front = 0.0
        self.total_processed = 0
        self.total_failures = 0
        self.started = time.time()
        self.command_count = 0
        self.connections = 0
        # The background tasks' counters, as Faktory's task runner keeps them (INFO's
        # ``tasks`` block). Faktory's scanners (Scheduled, Retries, Dead) count their runs,
        # the jobs they moved and the wall time they spent; its reapers (Busy for expired
        # reservations, Workers for silent heartbeats) count what they reaped. Every task
        # here runs on each tick, so ``cycles`` counts ticks.
        self.scanner_stats = {name: ScannerStats() for name in ("Scheduled", "Retries", "Dead")}
        self.reaped_reservations = 0
        self.reaped_workers = 0

    # -- row ids and positions ------------------------------------------------------------

    def _rowid(self) -> int:
        rowid = self._next_rowid
        self._next_rowid += 1
        return rowid

    def _position(self, front: bool) -> float:
        if front:
            self._front -= 1.0
            return self._front
        self._back += 1.0
        return self._back

    def restore_counters(self, max_rowid: int, min_pos: float, max_pos: float) -> None:
        """After loading from storage: continue ids and queue positions past what exists."""
        self._next_rowid = max(self._next_rowid, max_rowid + 1)
        self._front = min(self._front, min_pos)
        self._back = max(self._back, max_pos)

    # -- queues ---------------------------------------------------------------------------

    def _queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            queue = self.queues[name] = Queue(name)
            if self.journal is not None:
                self.journal.queue(name, False)
        return queue

    def _enqueue(
        self,
        queue_name: str,
        rowid: int,
        jid: str,
        data: bytes,
        reserve_for: int,
        *,
        front: bool = False,
        known: bool = True,
    ) -> None:
        """Put a job on a queue, or straight into a waiting FETCH. ``known`` says the row
        exists in the journal already (a move) rather than being new (a put)."""
        queue = self._queue(queue_name)
        now = self.clock.now()
        # A throttled queue's job waits in line; wake() hands it out if the throttle allows.
        throttled = self.throttles is not None and queue_name in self.throttles.limits
        if not queue.paused and not throttled:
            waiters = self.waiters.get(queue_name)
            if waiters and self.enterprise is not None and self.enterprise.has_expired(data, now):
                # Handed straight to a FETCH: Enterprise's check at FETCH happens here.
                self._drop_expired(rowid, jid, data, known)
                return
            while waiters:
                waiter = waiters.popleft()
                if waiter.done:
                    continue
                if not waiter.alive():
                    # The connection went away while it waited: never reserve for it.
                    waiter.done = True
                    continue
                waiter.done = True
                res = self._reserve(queue_name, rowid, jid, data, reserve_for, waiter.wid, known)
                waiter.deliver(res)
                return
        job = QueuedJob(rowid, jid, data, now, reserve_for)
        if front:
            queue.jobs.appendleft(job)
        else:
            queue.jobs.append(job)
        if self.journal is not None:
            pos = self._position(front)
            if known:
                self.journal.move(rowid, STATE_QUEUED, pos, "")
            else:
                self.journal.put(rowid, jid, STATE_QUEUED, queue_name, pos, data, "")
        if throttled:
            throttles_mod.wake(self, [queue_name])

    def _reserve(
        self,
        queue: str,
        rowid: int,
        jid: str,
        data: bytes,
        reserve_for: int,
        wid: str,
        known: bool = True,
    ) -> Reservation:
        now = self.clock.now()
        expires = now + jobs_mod.reservation_seconds(reserve_for)
        res = Reservation(rowid, jid, data, queue, expires, wid, reserve_for)
        if self.enterprise is not None:
            self.enterprise.started(jid, data, now)
        if self.throttles is not None:
            self.throttles.take(queue, jid, wid, now)
        old = self.reservations.get(jid)
        if old is not None and self.journal is not None:
            # Faktory keys reservations by jid: a second job with the same jid replaces it.
            self.journal.delete(old.rowid)
        self.reservations[jid] = res
        heapq.heappush(self._expiry_heap, (expires, rowid, jid))
        if self.journal is not None:
            if known:
                self.journal.move(rowid, STATE_RESERVED, expires, wid)
            else:
                self.journal.put(rowid, jid, STATE_RESERVED, queue, expires, data, wid)
        return res

    def push(self, job: dict[str, Any]) -> None:
        """Store a validated job (see :func:`kaffi.server.jobs.parse_job`); in Enterprise mode
        a job the rules refuse raises :class:`~kaffi.server.enterprise.JobRefused`."""
        now_ns = self.clock.now_ns()
        at = job.get("at")
        when = jobs_mod.at_timestamp(at) if at else None
        if not job.get("created_at"):
            job["created_at"] = time_string(now_ns)
        if when is not None and when > now_ns / 1e9:
            job.pop("enqueued_at", None)
            data = encode_job(job)
            if self.scheduled.rowid_of(data) is not None:
                # Faktory keys its scheduled set by the JSON: an identical job is stored once.
                return
            if self.enterprise is not None:
                self.enterprise.admit(job, now_ns / 1e9, when)
            rowid = self._rowid()
            self.scheduled.add(TimedEntry(when, rowid, job["jid"], data))
            if self.journal is not None:
                self.journal.put(rowid, job["jid"], STATE_SCHEDULED, job["queue"], when, data, "")
            return
        if self.enterprise is not None:
            self.enterprise.admit(job, now_ns / 1e9, when)
        job["enqueued_at"] = time_string(now_ns)
        data = encode_job(job)
        self._enqueue(
            job["queue"], self._rowid(), job["jid"], data, job.get("reserve_for") or 0, known=False
        )

    def fetch(self, queues: Iterable[str], wid: str) -> Reservation | None:
        """Reserve the first job of the first non-empty, unpaused queue, in the given order.
        In Enterprise mode an expired job met on the way is dropped and counted."""
        ent, thr = self.enterprise, self.throttles
        for name in queues:
            queue = self.queues.get(name)
            if queue is None or queue.paused:
                continue
            if thr is not None and not thr.allows(name, wid, self.clock.now()):
                continue  # at its throttle's limit: as if empty
            while queue.jobs:
                job = queue.jobs.popleft()
                if ent is not None and ent.has_expired(job.data, self.clock.now()):
                    self._drop_expired(job.rowid, job.jid, job.data, True)
                    continue
                return self._reserve(name, job.rowid, job.jid, job.data, job.reserve_for, wid)
        return None

    def _drop_expired(self, rowid: int, jid: str, data: bytes, known: bool) -> None:
        assert self.enterprise is not None
        self.enterprise.dropped_expired(jid, data, self.clock.now())
        if known and self.journal is not None:
            self.journal.delete(rowid)

    def extend_reservation(self, jid: str, until: float) -> None:
        """Enterprise's TRACK SET ``reserve_until``: the job reserved as ``jid`` stays
        reserved until ``until`` (a reservation is only ever lengthened)."""
        res = self.reservations.get(jid)
        if res is None or until <= res.expires:
            return
        res.expires = until
        heapq.heappush(self._expiry_heap, (until, res.rowid, jid))
        if self.journal is not None:
            self.journal.move(res.rowid, STATE_RESERVED, until, res.wid)

    def add_waiter(self, waiter: Waiter) -> None:
        """Park a blocked FETCH: the next job pushed to one of its queues goes to it."""
        for name in waiter.queues:
            self.waiters.setdefault(name, deque()).append(waiter)

    def remove_waiter(self, waiter: Waiter) -> None:
        """Forget a blocked FETCH (it timed out, or its connection went away)."""
        waiter.done = True
        for name in waiter.queues:
            waiters = self.waiters.get(name)
            if waiters is None:
                continue
            try:
                waiters.remove(waiter)
            except ValueError:
                continue
            if not waiters:
                del self.waiters[name]

    def return_to_front(self, res: Reservation) -> None:
        """A reserved job whose connection vanished before it was sent: put it back first
        in line, as if it had never been fetched."""
        if self.reservations.get(res.jid) is res:
            del self.reservations[res.jid]
            if self.throttles is not None:
                self.throttles.release(res.jid)
            self._enqueue(res.queue, res.rowid, res.jid, res.data, res.reserve_for, front=True)

    def ack(self, jid: str) -> None:
        """ACK: the reserved job is done and forgotten (an unknown jid is fine, as in Faktory)."""
        res = self.reservations.pop(jid, None)
        if res is None:
            return
        self.total_processed += 1
        if self.enterprise is not None:
            self.enterprise.succeeded(jid, res.data, self.clock.now())
        if self.journal is not None:
            self.journal.delete(res.rowid)
        if self.throttles is not None:
            throttles_mod.unthrottle(self, jid)

    def fail(self, jid: str, errtype: str, message: str, backtrace: list[str] | None) -> None:
        """FAIL: the texts are cleaned as Faktory does (trimmed, cut, "unknown" if empty)."""
        if not jid:
            raise CoreError("missing JID")
        errtype = trim_and_cut(errtype, FAIL_ERRTYPE_MAX) or "unknown"
        message = trim_and_cut(message, FAIL_MESSAGE_MAX) or "unknown"
        res = self.reservations.pop(jid, None)
        if res is None:
            raise CoreError(f"Job not found {jid}")
        self.total_processed += 1
        self._failed(res, errtype, message, backtrace)
        if self.throttles is not None:
            throttles_mod.unthrottle(self, jid)

    def _failed(
        self, res: Reservation, errtype: str, message: str, backtrace: list[str] | None
    ) -> None:
        """Faktory's processFailure: update the failure record, then retry, kill or drop."""
        self.total_failures += 1
        job = jobs_mod.decode_job(res.data)
        retry = job.get("retry")
        if retry is None:
            retry = job["retry"] = jobs_mod.DEFAULT_RETRY
        lines = list(backtrace[:MAX_BACKTRACE]) if backtrace else None
        failure = job.get("failure")
        if failure:
            # As Faktory: failed_at keeps the first failure's time, remaining counts down.
            failure["retry_count"] = int(failure.get("retry_count") or 0) + 1
            if int(failure.get("remaining") or 0) > 0:
                failure["remaining"] = int(failure["remaining"]) - 1
        else:
            failure = job["failure"] = {
                "retry_count": 0,
                "remaining": retry,
                "failed_at": self.clock.now_string(),
            }
        failure["message"] = message
        failure["errtype"] = errtype
        failure["backtrace"] = lines
        if self.enterprise is not None:
            dead = retry != 0 and failure["retry_count"] >= retry
            self.enterprise.failed(res.jid, res.data, dead, self.clock.now())
        if retry == 0:
            # No retry and no death: the job is gone.
            if self.journal is not None:
                self.journal.delete(res.rowid)
            return
        if failure["retry_count"] < retry:
            when = self.clock.now() + retry_delay(failure["retry_count"])
            failure["next_at"] = time_string(int(when * 1e9))
            data = encode_job(job)
            self.retries.add(TimedEntry(when, res.rowid, res.jid, data))
            if self.journal is not None:
                self.journal.put(res.rowid, res.jid, STATE_RETRY, res.queue, when, data, "")
            return
        self.to_dead(res.rowid, res.jid, res.queue, encode_job(job), self.clock.now())

    def to_dead(self, rowid: int, jid: str, queue: str, data: bytes, now: float) -> None:
        """Put a job into the dead set (the last failure, or MUTATE kill)."""
        self.dead.add(TimedEntry(now, rowid, jid, data))
        if self.journal is not None:
            self.journal.put(rowid, jid, STATE_DEAD, queue, now, data, "")

    # -- timers ---------------------------------------------------------------------------

    def requeue_entry(self, entry: TimedEntry, *, touch: bool = True) -> None:
        """Move a set entry to its queue (a due retry or scheduled job, MUTATE requeue);
        ``touch`` stamps a new ``enqueued_at``."""
        job = jobs_mod.decode_job(entry.data)
        queue = job.get("queue") or "default"
        data = entry.data
        if touch:
            job["enqueued_at"] = self.clock.now_string()
            data = encode_job(job)
        if self.journal is not None:
            self.journal.put(entry.rowid, entry.jid, STATE_QUEUED, queue, 0.0, data, "")
        self._enqueue(queue, entry.rowid, entry.jid, data, job.get("reserve_for") or 0)

    def tick(self) -> list[int]:
        """Run the periodic tasks; return the connection ids of forgotten workers."""
        now = self.clock.now()
        scanners = self.scanner_stats
        with scanners["Scheduled"].run() as scheduled:
            for entry in list(self.scheduled.pop_due(now)):
                scheduled.enqueued += 1
                self.requeue_entry(entry)
        with scanners["Retries"].run() as retries:
            for entry in list(self.retries.pop_due(now)):
                retries.enqueued += 1
                self.requeue_entry(entry)
        self._reap(now)
        if self.enterprise is not None:
            self.enterprise.prune(now)
        if self.throttles is not None:
            throttles_mod.wake(self, self.throttles.expire(now))
        # Faktory's Dead scanner counts the jobs it purged (180 days old) as "enqueued".
        with scanners["Dead"].run() as dead:
            for entry in list(self.dead.pop_due(now - DEAD_TTL)):
                dead.enqueued += 1
                if self.journal is not None:
                    self.journal.delete(entry.rowid)
        closing: list[int] = []
        for wid, worker in list(self.workers.items()):
            if now - worker.last_beat > HEARTBEAT_EXPIRY:
                del self.workers[wid]
                self.reaped_workers += 1
                closing.extend(worker.connections)
                throttles_mod.unthrottle(self, wid=wid)
        return closing

    def _reap(self, now: float) -> None:
        heap = self._expiry_heap
        while heap and heap[0][0] <= now:
            expires, rowid, jid = heapq.heappop(heap)
            res = self.reservations.get(jid)
            if res is None or res.rowid != rowid or res.expires != expires:
                continue
            del self.reservations[jid]
            self.reaped_reservations += 1
            self._failed(res, "ReservationExpired", "Faktory job reservation expired", None)
            throttles_mod.unthrottle(self, jid)
        if len(heap) > 2 * len(self.reservations) + 64:
            self._expiry_heap = [(r.expires, r.rowid, r.jid) for r in self.reservations.values()]
            heapq.heapify(self._expiry_heap)

    # -- MUTATE ---------------------------------------------------------------------------

    def mutate(self, cmd: str, target: str, flt: dict[str, Any] | None) -> None:
        """MUTATE ``cmd`` (clear, kill, discard, requeue) on ``target`` with Faktory's filters
        (run by :mod:`kaffi.server.mutate`); raises CoreError with Faktory's text for a bad
        cmd or target."""
        sets = {STATE_RETRY: self.retries, STATE_SCHEDULED: self.scheduled, STATE_DEAD: self.dead}
        # Faktory looks at the command first, then at the target.
        if cmd not in ("clear", "kill", "discard", "requeue"):
            raise CoreError("unknown mutate operation")
        tset = sets.get(target)
        if tset is None:
            raise CoreError("invalid target for mutation command")
        mutate_mod.apply(self, cmd, tset, flt)

    # -- QUEUE ----------------------------------------------------------------------------

    def _names(self, names: list[str]) -> list[str]:
        if "*" in names:
            return list(self.queues)
        return [n for n in names if n in self.queues]

    def pause(self, names: list[str]) -> None:
        """QUEUE PAUSE: FETCH skips these known queues (``*``: all); unknown names are ignored."""
        for name in self._names(names):
            self.queues[name].paused = True
            if self.journal is not None:
                self.journal.queue(name, True)

    def resume(self, names: list[str]) -> None:
        """QUEUE RESUME: FETCH takes from these queues again; waiting FETCHes are served."""
        for name in self._names(names):
            queue = self.queues[name]
            queue.paused = False
            if self.journal is not None:
                self.journal.queue(name, False)
            # Hand what waited behind the pause to FETCHes blocked on this queue.
            waiters = self.waiters.get(name)
            while waiters and queue.jobs:
                job = queue.jobs.popleft()
                before = len(queue.jobs)
                self._enqueue(name, job.rowid, job.jid, job.data, job.reserve_for, front=True)
                if len(queue.jobs) > before:
                    break

    def paused(self) -> list[str]:
        """The names of the paused queues, sorted (kaffi's ``KAFFI PAUSED``: Faktory's
        protocol has no way to ask)."""
        return sorted(name for name, queue in self.queues.items() if queue.paused)

    def remove(self, names: list[str]) -> None:
        """QUEUE REMOVE: delete these queues and their jobs, and forget their names."""
        for name in self._names(names):
            queue = self.queues.pop(name)
            if self.journal is not None:
                for job in queue.jobs:
                    self.journal.delete(job.rowid)
                self.journal.queue(name, None)

    def clear_queue(self, name: str) -> int:
        """Delete every job waiting in queue ``name`` (the queue stays known, paused or
        not, unlike QUEUE REMOVE); returns how many jobs went."""
        queue = self.queues.get(name)
        if queue is None:
            return 0
        count = len(queue.jobs)
        if self.journal is not None:
            for job in queue.jobs:
                self.journal.delete(job.rowid)
        queue.jobs.clear()
        return count

    def delete_queued(self, name: str, jids: Iterable[str]) -> int:
        """Delete the jobs with these jids from queue ``name``; returns how many went."""
        queue = self.queues.get(name)
        wanted = set(jids)
        if queue is None or not wanted:
            return 0
        kept: deque[QueuedJob] = deque()
        gone = 0
        for job in queue.jobs:
            if job.jid in wanted:
                gone += 1
                if self.journal is not None:
                    self.journal.delete(job.rowid)
            else:
                kept.append(job)
        queue.jobs = kept
        return gone

    def latency(self, names: list[str]) -> dict[str, float]:
        """QUEUE LATENCY: seconds the oldest job of each named queue has waited (0 when empty)."""
        now = self.clock.now()
        out: dict[str, float] = {}
        for name in names:
            queue = self.queues.get(name)
            if queue is None or not queue.jobs:
                out[name] = 0.0
            else:
                out[name] = max(now - queue.jobs[0].enqueued, 0.0)
        return out

    # -- workers --------------------------------------------------------------------------

    def register(
        self, wid: str, hostname: str, pid: int, labels: list[str], conn_id: int
    ) -> RegisteredWorker:
        """HELLO with a wid: know the worker (or add a connection to it)."""
        now = self.clock.now()
        worker = self.workers.get(wid)
        if worker is None:
            worker = self.workers[wid] = RegisteredWorker(wid, hostname, pid, labels, now, now)
            worker.first_connection = conn_id
        worker.last_beat = now
        worker.connections.add(conn_id)
        return worker

    def unregister(self, wid: str, conn_id: int) -> None:
        """A worker's connection closed; with its last one the worker is forgotten (as
        Faktory does: a later HELLO with that wid starts afresh, running)."""
        worker = self.workers.get(wid)
        if worker is not None:
            worker.connections.discard(conn_id)
            if not worker.connections:
                del self.workers[wid]
                throttles_mod.unthrottle(self, wid=wid)

    def beat(self, wid: str, current_state: str, rss_kb: int) -> RegisteredWorker:
        """BEAT: refresh the worker, record its state and rss_kb, return it (its ``state`` is
        what the reply tells it); raises CoreError for an unknown wid."""
        worker = self.workers.get(wid)
        if worker is None:
            raise CoreError(f"unknown worker {wid}")
        worker.last_beat = self.clock.now()
        if rss_kb:
            worker.rss_kb = rss_kb
        self._advance_state(worker, current_state)
        return worker

    @staticmethod
    def _advance_state(worker: RegisteredWorker, state: str) -> None:
        # States only move forward: running -> quiet -> terminate.
        if _WORKER_STATES.get(state, -1) > _WORKER_STATES[worker.state]:
            worker.state = state

    def signal_worker(self, wid: str, state: str) -> bool:
        """Ask a worker to quiet or terminate (told in the reply to its next BEAT)."""
        if state not in ("quiet", "terminate"):
            raise ValueError(f"a worker can be asked to quiet or terminate, not {state!r}")
        worker = self.workers.get(wid)
        if worker is None:
            return False
        self._advance_state(worker, state)
        return True

    # -- INFO and FLUSH -------------------------------------------------------------------

    def flush(self) -> None:
        """FLUSH: delete every job in every queue and set. Queue names are kept and every
        queue is un-paused, as Faktory 1.10.0 does (its pause flags live in the Redis
        database FLUSH empties)."""
        if self.journal is not None:
            # Told first, while the counters still hold what the journal has not counted.
            self.journal.clear()
        for name, queue in self.queues.items():
            queue.jobs.clear()
            if queue.paused:
                queue.paused = False
                if self.journal is not None:
                    self.journal.queue(name, False)
        self.reservations.clear()
        self._expiry_heap.clear()
        self.retries.clear()
        self.scheduled.clear()
        self.dead.clear()
        self.total_processed = 0
        self.total_failures = 0
        if self.enterprise is not None:
            self.enterprise.clear()
        if self.throttles is not None:
            self.throttles.clear()

    def info(self) -> dict[str, Any]:
        """The INFO document, Faktory 1.10.0's shape (built in :mod:`kaffi.server.info`)."""
        return info_mod.info_document(self)

    # -- loading from storage -------------------------------------------------------------

    def load_row(
        self, rowid: int, jid: str, state: str, queue: str, score: float, data: bytes, wid: str
    ) -> None:
        """Rebuild one job row read back from storage (rows of a queue come in order)."""
        if state == STATE_QUEUED:
            job = jobs_mod.decode_job(data)
            enq = job.get("enqueued_at")
            try:
                enqueued = jobs_mod.at_timestamp(enq) if enq else self.clock.now()
            except ValueError:
                enqueued = self.clock.now()
            q = self.queues.get(queue)
            if q is None:
                q = self.queues[queue] = Queue(queue)
            q.jobs.append(QueuedJob(rowid, jid, data, enqueued, job.get("reserve_for") or 0))
        elif state == STATE_RESERVED:
            job = jobs_mod.decode_job(data)
            res = Reservation(rowid, jid, data, queue, score, wid, job.get("reserve_for") or 0)
            self.reservations[jid] = res
            heapq.heappush(self._expiry_heap, (score, rowid, jid))
        else:
            tset = {STATE_RETRY: self.retries, STATE_SCHEDULED: self.scheduled}.get(
                state, self.dead
            )
            tset.add(TimedEntry(score, rowid, jid, data))

    def load_queue(self, name: str, paused: bool) -> None:
        """Rebuild a queue read back from storage (with its paused flag)."""
        q = self.queues.get(name)
        if q is None:
            self.queues[name] = Queue(name, paused)
        else:
            q.paused = paused
