"""Faktory Enterprise's queue throttles for ``kaffi server --enterprise --throttles FILE``.

Two parts (``shared/faktory/ENTERPRISE.md`` section 5; the choices are written down in
``docs/embedded-server.md``):

- :func:`load_throttles` reads Enterprise's ``throttles.toml`` (or the same document
  already parsed) and checks it strictly: a ``[throttles]`` table, one key per queue,
  ``{ concurrency = N, timeout = T }`` (at most N jobs of the queue in flight on the
  server) or ``{ worker = N, timeout = T }`` (at most N per worker process, by wid).
  Every mistake is a :class:`~kaffi.errors.ConfigurationError` of one line naming the
  file, the queue and the key.
- :class:`Throttles` holds the locks: one per job fetched from a throttled queue, taken
  when the core reserves the job and released at ACK or FAIL, when its reservation is
  reaped, when its worker is forgotten, or ``timeout`` seconds after it was taken.

- :func:`wake` and :func:`unthrottle`: when a job arrives in a throttled queue or a slot
  is freed, the FETCHes blocked on that queue that the throttle now lets through are
  served, through the core's own ``fetch``.

The core asks :meth:`Throttles.allows` before serving a queue and tells this module
about reservations and releases. It never changes queues or jobs other than through the
core's methods, does no I/O, and has no clock of its own (times are the core's). The
locks live in memory.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kaffi.errors import ConfigurationError
from kaffi.protocol.models import QUEUE_NAME_PATTERN
from kaffi.server.structures import Reservation, Waiter

if TYPE_CHECKING:
    from kaffi.server.core import ServerCore

__all__ = ["Throttle", "Throttles", "ThrottleSource", "load_throttles", "unthrottle", "wake"]

#: What ``throttles=`` takes: a path to a TOML file, or the document as TOML parses it.
ThrottleSource = str | os.PathLike[str] | Mapping[str, Any]

_KINDS = ("concurrency", "worker")
_KEYS = (*_KINDS, "timeout")
_SHAPE = "{ concurrency = N, timeout = SECONDS } or { worker = N, timeout = SECONDS }"


@dataclass(frozen=True, slots=True)
class Throttle:
    """One queue's limit: ``limit`` jobs in flight on the server, or per worker process
    when ``per_worker``; a lock lapses ``timeout`` seconds after its FETCH."""

    queue: str
    limit: int
    per_worker: bool
    timeout: int

    def describe(self) -> dict[str, int]:
        """The throttle as written in ``throttles.toml``."""
        return {"worker" if self.per_worker else "concurrency": self.limit, "timeout": self.timeout}


def _kind(value: object) -> str:
    """A TOML value's kind, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return "a date or time"


def _shown(value: object) -> str:
    """A value as the user wrote it, near enough (TOML's literals are JSON's here)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def _read(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """Parse the TOML file at ``path`` (tomllib, or tomli before Python 3.11)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the 3.10 CI run covers it
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            doc: dict[str, Any] = tomllib.load(fh)
            return doc
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read throttles file {os.fspath(path)}: {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"throttles file {os.fspath(path)}: not valid TOML: not UTF-8 text ({exc.reason} "
            f"at byte {exc.start})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"throttles file {os.fspath(path)}: not valid TOML: {exc}"
        ) from None


def load_throttles(source: ThrottleSource) -> dict[str, Throttle]:
    """The throttles ``source`` defines, by queue name: ``source`` is the path of a
    ``throttles.toml`` or the document as TOML parses it (``{"throttles": {queue:
    {"concurrency": N, "timeout": T}}}``). Raises :class:`ConfigurationError` naming the
    file, the queue and the key of the first mistake."""
    if isinstance(source, Mapping):
        where, doc = "throttles", source
    else:
        where, doc = f"throttles file {os.fspath(source)}", _read(source)

    def bad(message: str) -> ConfigurationError:
        return ConfigurationError(f"{where}: {message}")

    for key in doc:
        if key != "throttles":
            raise bad(f"unknown top-level key {key!r}: kaffi server reads only [throttles]")
    table = doc.get("throttles")
    if table is None:
        raise bad("no [throttles] table")
    if not isinstance(table, Mapping):
        raise bad(f"[throttles] must be a table of queues, got {_kind(table)}")
    throttles: dict[str, Throttle] = {}
    for queue, spec in table.items():
        if not isinstance(queue, str) or not QUEUE_NAME_PATTERN.fullmatch(queue):
            raise bad(f"queue {queue!r}: not a queue name (they match [a-zA-Z0-9._-]+)")
        throttles[queue] = _throttle(queue, spec, f"{where}: queue {queue!r}")
    return throttles


def _throttle(queue: str, spec: object, where: str) -> Throttle:
    """One queue's entry, checked; an error starts with ``where``."""

    def bad(message: str) -> ConfigurationError:
        return ConfigurationError(f"{where}: {message}")

    if not isinstance(spec, Mapping):
        raise bad(f"must be a table like {_SHAPE}, got {_kind(spec)}")
    for key in spec:
        if key not in _KEYS:
            raise bad(f"unknown key {key!r} (a throttle has concurrency or worker, and timeout)")
    kinds = [k for k in _KINDS if k in spec]
    if len(kinds) != 1:
        what = "both concurrency and worker" if kinds else "neither concurrency nor worker"
        raise bad(f"{what}: give one, as in {_SHAPE}")
    if "timeout" not in spec:
        raise bad("timeout is missing: seconds a lock lives before it lapses (required)")
    values: dict[str, int] = {}
    for key in (kinds[0], "timeout"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise bad(f"{key} must be a positive integer, got {_kind(value)} {_shown(value)}")
        values[key] = value
    return Throttle(queue, values[kinds[0]], kinds[0] == "worker", values["timeout"])


@dataclass(slots=True)
class _Lock:
    queue: str
    wid: str
    expires: float


class Throttles:
    """The throttle locks of one server: which jobs hold a slot of a throttled queue."""

    def __init__(self, limits: Mapping[str, Throttle]) -> None:
        #: queue name -> its throttle.
        self.limits = dict(limits)
        #: jid -> the lock the job holds.
        self._locks: dict[str, _Lock] = {}
        #: queue name -> the jids holding its slots.
        self._by_queue: dict[str, set[str]] = {name: set() for name in self.limits}

    def __repr__(self) -> str:
        return f"<Throttles {len(self.limits)} queues, {len(self._locks)} locks>"

    def _held(self, queue: str, now: float) -> set[str]:
        """The jids holding ``queue``'s slots now; lapsed locks are dropped on the way."""
        held = self._by_queue[queue]
        for jid in [j for j in held if self._locks[j].expires <= now]:
            held.discard(jid)
            del self._locks[jid]
        return held

    def allows(self, queue: str, wid: str, now: float) -> bool:
        """Whether a job of ``queue`` may be handed to worker ``wid`` now (always, for a
        queue with no throttle)."""
        throttle = self.limits.get(queue)
        if throttle is None:
            return True
        held = self._held(queue, now)
        if throttle.per_worker:
            return sum(1 for jid in held if self._locks[jid].wid == wid) < throttle.limit
        return len(held) < throttle.limit

    def take(self, queue: str, jid: str, wid: str, now: float) -> None:
        """Job ``jid`` of ``queue`` was reserved for worker ``wid``: it holds a slot until
        released or ``timeout`` seconds from ``now`` (nothing for an unthrottled queue)."""
        throttle = self.limits.get(queue)
        if throttle is None:
            return
        self.release(jid)
        self._locks[jid] = _Lock(queue, wid, now + throttle.timeout)
        self._by_queue[queue].add(jid)

    def release(self, jid: str) -> list[str]:
        """Job ``jid`` is done (ACK, FAIL, reaped): free its slot. Returns the queue freed,
        as a list (empty when the job held none)."""
        lock = self._locks.pop(jid, None)
        if lock is None:
            return []
        self._by_queue[lock.queue].discard(jid)
        return [lock.queue]

    def release_worker(self, wid: str) -> list[str]:
        """Worker ``wid`` is forgotten: free every slot its jobs hold. Returns the queues
        freed."""
        freed: set[str] = set()
        for jid in [j for j, lock in self._locks.items() if lock.wid == wid]:
            freed.update(self.release(jid))
        return sorted(freed)

    def expire(self, now: float) -> list[str]:
        """Drop the locks whose ``timeout`` has passed; returns the queues freed."""
        freed = []
        for queue, held in self._by_queue.items():
            before = len(held)
            if len(self._held(queue, now)) < before:
                freed.append(queue)
        return freed

    def restore(self, reservations: Iterable[Reservation], now: float) -> None:
        """After a restart with ``--data``: the reserved jobs of throttled queues hold
        their slots again, each for a full ``timeout`` from ``now``."""
        for res in reservations:
            self.take(res.queue, res.jid, res.wid, now)

    def pick(self, queue: str, waiters: deque[Waiter] | None, now: float) -> Waiter | None:
        """The first blocked FETCH on ``queue`` that the throttle lets through now, if
        any (FETCHes that have finished are dropped from ``waiters`` on the way)."""
        if not waiters:
            return None
        if any(w.done for w in waiters):
            live = [w for w in waiters if not w.done]
            waiters.clear()
            waiters.extend(live)
        for waiter in waiters:
            if waiter.alive() and self.allows(queue, waiter.wid, now):
                return waiter
        return None

    def clear(self) -> None:
        """FLUSH: no job is reserved any more, so no lock is held."""
        self._locks.clear()
        for held in self._by_queue.values():
            held.clear()

    def info(self, now: float) -> dict[str, dict[str, Any]]:
        """INFO's ``faktory.throttles`` (a kaffi addition): per queue, its throttle as in
        ``throttles.toml`` and ``in_flight``, the locks held now (plus ``by_worker`` for a
        per-worker throttle). Reads only: lapsed locks are not counted, nor dropped."""
        out: dict[str, dict[str, Any]] = {}
        for queue in sorted(self.limits):
            throttle = self.limits[queue]
            live = [self._locks[j] for j in self._by_queue[queue] if self._locks[j].expires > now]
            doc: dict[str, Any] = {**throttle.describe(), "in_flight": len(live)}
            if throttle.per_worker:
                counts: dict[str, int] = {}
                for lock in live:
                    counts[lock.wid] = counts.get(lock.wid, 0) + 1
                doc["by_worker"] = dict(sorted(counts.items()))
            out[queue] = doc
        return out


def wake(core: ServerCore, names: Iterable[str]) -> None:
    """Serve the FETCHes blocked on the throttled queues ``names`` that their throttle
    now lets through (a job arrived, or a lock was released): each gets the queue's next
    job from ``core.fetch``, as if it had just asked. The core calls it; the blocked
    FETCHes are the core's (its waiters, by queue)."""
    throttles = core.throttles
    assert throttles is not None
    for name in names:
        queue = core.queues.get(name)
        while queue is not None and queue.jobs and not queue.paused:
            waiter = throttles.pick(name, core.waiters.get(name), core.clock.now())
            res = core.fetch([name], waiter.wid) if waiter is not None else None
            if waiter is None or res is None:
                break  # nobody may take one, or only expired jobs were left
            core.remove_waiter(waiter)
            waiter.deliver(res)


def unthrottle(core: ServerCore, jid: str = "", wid: str = "") -> None:
    """Job ``jid`` is done (or worker ``wid`` is forgotten, with every job it holds):
    release the lock and serve the FETCHes waiting for it. Nothing without throttles."""
    throttles = core.throttles
    if throttles is not None:
        wake(core, throttles.release_worker(wid) if wid else throttles.release(jid))
