"""What ``kaffi server --enterprise`` adds to the core: unique locks, expiring jobs,
progress tracking and batches, as Faktory Enterprise does them
(``shared/faktory/ENTERPRISE.md`` sections 1 to 4; where it is unsure, the choice is
written in ``docs/embedded-server.md``).

:class:`Enterprise` holds that state and decides (batches in
:class:`~kaffi.server.batches.Batches`, which it owns); :class:`~kaffi.server.core.ServerCore`
calls it at PUSH, FETCH, ACK and FAIL when the server runs with ``--enterprise``, and the
session calls it for TRACK and BATCH. It reads a job's ``custom`` from the stored JSON at
those moments instead of keeping per-job records, so nothing is left behind when a job is
deleted some other way (MUTATE, QUEUE REMOVE). No sockets, no clock of its own: times are
the core's.

With ``--data`` the storage layer calls :meth:`Enterprise.durable` after loading the
records back (:meth:`Enterprise.load`); from then on every change of a lock, a progress
record, a batch or the expired counter is noted by key, and the storage layer writes the
current value of each noted key (:meth:`Enterprise.changes`) in the same transaction as
the job changes of that loop turn. Without ``--data`` nothing is noted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kaffi.server import jobs as jobs_mod
from kaffi.server.batches import BatchError, Batches
from kaffi.server.gocompat import parse_rfc3339
from kaffi.server.jobs import time_string

__all__ = [
    "Enterprise",
    "JobRefused",
    "NotUniqueRejected",
    "NOT_UNIQUE_CODE",
    "NOT_UNIQUE_MESSAGE",
    "TRACK_TTL",
    "unique_key",
]

#: Enterprise's reply to a duplicate: ``-NOTUNIQUE Job not unique`` (ENTERPRISE.md 3,
#: observed by faktory-rs against the Enterprise binary).
NOT_UNIQUE_CODE = "NOTUNIQUE"
NOT_UNIQUE_MESSAGE = "Job not unique"
#: A progress record lives this long after its last change (the wiki: 30 minutes).
TRACK_TTL = 1800.0


class JobRefused(Exception):
    """A PUSH the Enterprise rules refuse: ``code`` and ``message`` make the error reply
    (``-<code> <message>``)."""

    code = "ERR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason(self) -> str:
        """PUSHB's per-job text: Faktory stores ``err.Error()``, which is "CODE message"
        for a coded error and the bare message otherwise."""
        return self.message if self.code == "ERR" else f"{self.code} {self.message}"


class NotUniqueRejected(JobRefused):
    """A PUSH of a job whose unique lock is held."""

    code = NOT_UNIQUE_CODE

    def __init__(self, key: str = "") -> None:
        super().__init__(NOT_UNIQUE_MESSAGE)
        #: The lock's key (see :func:`unique_key`).
        self.key = key


def unique_key(job: dict[str, Any]) -> str:
    """The lock's key: jobtype, queue and args (the wiki: the same args in another queue
    are a different job), with the args as canonical JSON."""
    args = json.dumps(job.get("args") or [], sort_keys=True, separators=(",", ":"))
    return f"{job.get('jobtype')}\x00{job.get('queue') or 'default'}\x00{args}"


def _custom(job: dict[str, Any]) -> dict[str, Any]:
    custom = job.get("custom")
    return custom if isinstance(custom, dict) else {}


def _unique_for(custom: dict[str, Any]) -> float | None:
    """``custom.unique_for`` when it is a positive number (a string is not honoured, as in
    Enterprise: its wiki tells Rails users to send ``to_i``)."""
    value = custom.get("unique_for")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _expires_at(custom: dict[str, Any]) -> float | None:
    """``custom.expires_at`` as a timestamp; a value that is not RFC 3339 never expires."""
    value = custom.get("expires_at")
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_rfc3339(value).timestamp()
    except ValueError:
        return None


@dataclass(slots=True)
class _Lock:
    owner: str
    expires: float


@dataclass(slots=True)
class _Track:
    state: str
    updated: float
    percent: int | None = None
    desc: str | None = None


#: The kinds of stored records (see :meth:`Enterprise.changes`).
LOCK, TRACK, BATCH, COUNTER = "lock", "track", "batch", "counter"
_EXPIRED = "expired"


class Enterprise:
    """Unique locks, expiry, progress records and batches of one server. ``push`` stores
    a job as PUSH does (the batches enqueue their callbacks with it)."""

    def __init__(self, push: Callable[[dict[str, Any]], None]) -> None:
        #: unique key -> the jid holding it and when it lapses.
        self.locks: dict[str, _Lock] = {}
        #: jid -> progress record, for jobs pushed with ``custom.track = 1``.
        self.tracks: dict[str, _Track] = {}
        #: Jobs dropped at FETCH because their ``expires_at`` had passed.
        self.expired = 0
        #: (kind, key) of the records changed since the storage layer last wrote them;
        #: None when nothing is stored (no ``--data``).
        self._changed: set[tuple[str, str]] | None = None
        self.batches = Batches(push, lambda bid: self._note(BATCH, bid))

    def _note(self, kind: str, key: str) -> None:
        if self._changed is not None:
            self._changed.add((kind, key))

    # -- PUSH -----------------------------------------------------------------------------

    def admit(self, job: dict[str, Any], now: float, at: float | None) -> None:
        """A validated job is about to be stored: take its unique lock (raise
        :class:`NotUniqueRejected` when another job holds it), start its progress record
        and count it in its batch (raise :class:`JobRefused` for an unknown batch). A job
        without ``unique_for`` ignores locks (the wiki's "bypassing uniqueness"); a
        scheduled job's lock lasts its delay plus ``unique_for``."""
        custom = _custom(job)
        if not custom:
            return
        try:
            self.batches.check_join(custom)
        except BatchError as exc:
            raise JobRefused(str(exc)) from None
        ttl = _unique_for(custom)
        if ttl is not None:
            key = unique_key(job)
            lock = self.locks.get(key)
            # The holder's own jid again is the same job sent twice (a client resends a
            # PUSH whose reply was lost): accepted, as delivery is at least once anyway.
            if lock is not None and lock.expires > now and lock.owner != job["jid"]:
                raise NotUniqueRejected(key)
            start = at if at is not None and at > now else now
            self.locks[key] = _Lock(job["jid"], start + ttl)
            self._note(LOCK, key)
        if custom.get("track") == 1:
            self.tracks[job["jid"]] = _Track("enqueued", now)
            self._note(TRACK, job["jid"])
        self.batches.joined(custom, now)

    # -- FETCH, ACK, FAIL -----------------------------------------------------------------

    @staticmethod
    def has_expired(data: bytes, now: float) -> bool:
        """Whether the stored job ``data`` has an ``expires_at`` in the past (checked only
        at FETCH, as Enterprise does)."""
        if b'"expires_at"' not in data:
            return False
        expires = _expires_at(_custom(jobs_mod.decode_job(data)))
        return expires is not None and expires <= now

    def dropped_expired(self, jid: str, data: bytes, now: float) -> None:
        """Count a job dropped at FETCH; its progress record is forgotten, and in a batch
        it counts as failed (it will never run)."""
        self.expired += 1
        self._note(COUNTER, _EXPIRED)
        if self.tracks.pop(jid, None) is not None:
            self._note(TRACK, jid)
        if b'"bid"' in data:
            self.batches.failed(jid, _custom(jobs_mod.decode_job(data)), now)

    def started(self, jid: str, data: bytes, now: float) -> None:
        """A job was reserved: a ``unique_until: "start"`` lock is released, a tracked job
        is ``working``."""
        if b'"custom"' not in data:
            return
        job = jobs_mod.decode_job(data)
        if _custom(job).get("unique_until") == "start":
            self._release(job, jid)
        self._set_state(jid, "working", now)

    def succeeded(self, jid: str, data: bytes, now: float) -> None:
        """A job was ACKed: its lock is released (unless it was released at start), a
        tracked job is ``success``, its batch (or the batch it is a callback of) counts
        it."""
        if b'"custom"' not in data:
            return
        job = jobs_mod.decode_job(data)
        self._release(job, jid)
        self._set_state(jid, "success", now)
        self.batches.succeeded(jid, _custom(job), now)

    def failed(self, jid: str, data: bytes, dead: bool, now: float) -> None:
        """A job failed (it waits to retry, or was dropped) or died. Its lock is kept
        until it lapses, as Enterprise keeps it for a job waiting to retry; its batch
        counts the failure."""
        self._set_state(jid, "dead" if dead else "failed", now)
        if b'"bid"' in data:
            self.batches.failed(jid, _custom(jobs_mod.decode_job(data)), now)

    def _release(self, job: dict[str, Any], jid: str) -> None:
        if _unique_for(_custom(job)) is None:
            return
        key = unique_key(job)
        lock = self.locks.get(key)
        # Only the holder releases: a push that bypassed the lock must not free it.
        if lock is not None and lock.owner == jid:
            del self.locks[key]
            self._note(LOCK, key)

    def _set_state(self, jid: str, state: str, now: float) -> None:
        track = self.tracks.get(jid)
        if track is not None:
            track.state = state
            track.updated = now
            self._note(TRACK, jid)

    # -- TRACK ----------------------------------------------------------------------------

    def track_set(self, jid: str, percent: int | None, desc: str | None, now: float) -> None:
        """Record a tracked job's progress; for a job pushed without ``track`` nothing is
        recorded (its TRACK GET stays ``unknown``)."""
        track = self.tracks.get(jid)
        if track is None:
            return
        if percent is not None:
            track.percent = percent
        if desc is not None:
            track.desc = desc
        track.updated = now
        self._note(TRACK, jid)

    def track_get(self, jid: str) -> dict[str, Any]:
        """TRACK GET's document: ``jid``, ``percent`` and ``desc`` once set, ``state``,
        ``updated_at`` (``""`` and ``state: unknown`` for a job with no record)."""
        track = self.tracks.get(jid)
        if track is None:
            return {"jid": jid, "state": "unknown", "updated_at": ""}
        doc: dict[str, Any] = {"jid": jid}
        if track.percent is not None:
            doc["percent"] = track.percent
        if track.desc is not None:
            doc["desc"] = track.desc
        doc["state"] = track.state
        doc["updated_at"] = time_string(int(track.updated * 1e9))
        return doc

    # -- timers and FLUSH -----------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Forget lapsed locks, progress records unchanged for :data:`TRACK_TTL`, and
        batches past their time (:meth:`Batches.prune`)."""
        for key in [k for k, lock in self.locks.items() if lock.expires <= now]:
            del self.locks[key]
            self._note(LOCK, key)
        horizon = now - TRACK_TTL
        for jid in [j for j, t in self.tracks.items() if t.updated <= horizon]:
            del self.tracks[jid]
            self._note(TRACK, jid)
        self.batches.prune(now)

    def clear(self) -> None:
        """FLUSH: no locks, no records, no batches, and the counter back to 0 (the
        storage layer empties its table on FLUSH, so nothing is left to note)."""
        self.locks.clear()
        self.tracks.clear()
        self.batches.clear()
        self.expired = 0
        if self._changed is not None:
            self._changed.clear()

    # -- storage (--data) -----------------------------------------------------------------

    def durable(self) -> None:
        """From now on, note every change for the storage layer."""
        if self._changed is None:
            self._changed = set()

    @property
    def has_changes(self) -> bool:
        """True when records changed since :meth:`changes_written`."""
        return bool(self._changed)

    def changes(self) -> list[tuple[str, str, str | None]]:
        """The changed records as ``(kind, key, value)``; value None: the record is gone."""
        return [(kind, key, self._record(kind, key)) for kind, key in sorted(self._changed or ())]

    def changes_written(self) -> None:
        """The storage layer wrote :meth:`changes`."""
        if self._changed is not None:
            self._changed.clear()

    def _record(self, kind: str, key: str) -> str | None:
        if kind == LOCK:
            lock = self.locks.get(key)
            return None if lock is None else json.dumps(asdict(lock))
        if kind == TRACK:
            track = self.tracks.get(key)
            return None if track is None else json.dumps(asdict(track))
        if kind == BATCH:
            return self.batches.record(key)
        return str(self.expired) if self.expired else None

    def load(self, kind: str, key: str, value: str) -> None:
        """Take back one record written by the storage layer (kinds this version does
        not know are ignored)."""
        if kind == LOCK:
            self.locks[key] = _Lock(**json.loads(value))
        elif kind == TRACK:
            self.tracks[key] = _Track(**json.loads(value))
        elif kind == BATCH:
            self.batches.load(value)
        elif kind == COUNTER and key == _EXPIRED:
            self.expired = int(value)
