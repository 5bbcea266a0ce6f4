"""What ``kaffi server --enterprise`` adds to the core: unique locks, expiring jobs and
progress tracking, as Faktory Enterprise does them (``shared/faktory/ENTERPRISE.md``
sections 2 to 4; where it is unsure, the choice is written in ``docs/embedded-server.md``).

:class:`Enterprise` holds that state and decides; :class:`~kaffi.server.core.ServerCore`
calls it at PUSH, FETCH, ACK and FAIL when the server runs with ``--enterprise``, and the
session calls it for TRACK. It reads a job's ``custom`` from the stored JSON at those
moments instead of keeping per-job records, so nothing is left behind when a job is
deleted some other way (MUTATE, QUEUE REMOVE). No sockets, no clock of its own: times are
the core's. The state is in memory: a restart with ``--data`` keeps the jobs (with their
``custom``), not the locks or the progress records.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kaffi.server import jobs as jobs_mod
from kaffi.server.gocompat import parse_rfc3339
from kaffi.server.jobs import time_string

__all__ = [
    "Enterprise",
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


class NotUniqueRejected(Exception):
    """A PUSH of a job whose unique lock is held."""


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


class Enterprise:
    """Unique locks, expiry and progress records of one server."""

    def __init__(self) -> None:
        #: unique key -> the jid holding it and when it lapses.
        self.locks: dict[str, _Lock] = {}
        #: jid -> progress record, for jobs pushed with ``custom.track = 1``.
        self.tracks: dict[str, _Track] = {}
        #: Jobs dropped at FETCH because their ``expires_at`` had passed.
        self.expired = 0

    # -- PUSH -----------------------------------------------------------------------------

    def admit(self, job: dict[str, Any], now: float, at: float | None) -> None:
        """A validated job is about to be stored: take its unique lock (raise
        :class:`NotUniqueRejected` when another job holds it) and start its progress
        record. A job without ``unique_for`` ignores locks (the wiki's "bypassing
        uniqueness"); a scheduled job's lock lasts its delay plus ``unique_for``."""
        custom = _custom(job)
        if not custom:
            return
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
        if custom.get("track") == 1:
            self.tracks[job["jid"]] = _Track("enqueued", now)

    # -- FETCH, ACK, FAIL -----------------------------------------------------------------

    @staticmethod
    def has_expired(data: bytes, now: float) -> bool:
        """Whether the stored job ``data`` has an ``expires_at`` in the past (checked only
        at FETCH, as Enterprise does)."""
        if b'"expires_at"' not in data:
            return False
        expires = _expires_at(_custom(jobs_mod.decode_job(data)))
        return expires is not None and expires <= now

    def dropped_expired(self, jid: str) -> None:
        """Count a job dropped at FETCH; its progress record is forgotten."""
        self.expired += 1
        self.tracks.pop(jid, None)

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
        tracked job is ``success``."""
        if b'"custom"' not in data:
            return
        self._release(jobs_mod.decode_job(data), jid)
        self._set_state(jid, "success", now)

    def failed(self, jid: str, dead: bool, now: float) -> None:
        """A job failed (it waits to retry, or was dropped) or died. Its lock is kept
        until it lapses, as Enterprise keeps it for a job waiting to retry."""
        self._set_state(jid, "dead" if dead else "failed", now)

    def _release(self, job: dict[str, Any], jid: str) -> None:
        if _unique_for(_custom(job)) is None:
            return
        key = unique_key(job)
        lock = self.locks.get(key)
        # Only the holder releases: a push that bypassed the lock must not free it.
        if lock is not None and lock.owner == jid:
            del self.locks[key]

    def _set_state(self, jid: str, state: str, now: float) -> None:
        track = self.tracks.get(jid)
        if track is not None:
            track.state = state
            track.updated = now

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
        """Forget lapsed locks and progress records unchanged for :data:`TRACK_TTL`."""
        for key in [k for k, lock in self.locks.items() if lock.expires <= now]:
            del self.locks[key]
        horizon = now - TRACK_TTL
        for jid in [j for j, t in self.tracks.items() if t.updated <= horizon]:
            del self.tracks[jid]

    def clear(self) -> None:
        """FLUSH: no locks, no records, and the counter back to 0."""
        self.locks.clear()
        self.tracks.clear()
        self.expired = 0
