"""What the web UI reads from and does to a :class:`~kaffi.server.core.ServerCore`.

Plain functions over the core, with no HTTP and no templates, so they can be tested
without a web server: pages of queues and sets (25 rows a page, as Faktory's UI), job
summaries, the busy list, and the actions behind every button. They run on the server's
own event loop thread (the web app's handlers are all ``async``), like the commands do.

Must never import starlette, jinja2 or uvicorn, and never change the core other than
through its methods.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from kaffi.errors import KaffiError
from kaffi.server import jobs as jobs_mod
from kaffi.server.core import ServerCore, TimedEntry, TimedSet

__all__ = [
    "PAGE_SIZE",
    "SET_PATHS",
    "SET_ACTIONS",
    "WebInputError",
    "NotFound",
    "BadRequest",
    "Page",
    "JobRow",
    "QueueRow",
    "WorkerRow",
    "BusyJobRow",
    "parse_page",
    "entry_key",
    "job_row",
    "dashboard_counts",
    "queue_rows",
    "queue_page",
    "queue_action",
    "set_page",
    "set_entry",
    "set_action",
    "busy_workers",
    "busy_jobs",
    "busy_action",
]

#: Rows on one page of a queue or set, as Faktory's UI shows.
PAGE_SIZE = 25
#: The UI's path of each set (Faktory's UI calls the dead set "morgue") -> MUTATE target.
SET_PATHS = {"retries": "retries", "scheduled": "scheduled", "morgue": "dead"}
#: The buttons each set page offers -> the MUTATE operation they run.
SET_ACTIONS: dict[str, dict[str, str]] = {
    "retries": {"retry": "requeue", "delete": "discard", "kill": "kill"},
    "scheduled": {"retry": "requeue", "delete": "discard"},
    "morgue": {"retry": "requeue", "delete": "discard"},
}
_ARGS_SHOWN = 80
_WORKER_ACTIONS = ("quiet", "terminate")
_QUEUE_ACTIONS = ("pause", "resume", "clear", "delete")


class WebInputError(KaffiError):
    """A request the UI cannot serve; ``status`` is the HTTP status its page gets."""

    status = 400


class NotFound(WebInputError):
    """No such queue, job, worker or page."""

    status = 404


class BadRequest(WebInputError):
    """A malformed page number, key or form."""

    status = 400


_T = TypeVar("_T")


@dataclass(frozen=True)
class Page(Generic[_T]):
    """One page of rows: ``number`` of ``pages`` (1-based), out of ``total`` rows."""

    rows: list[_T]
    number: int
    pages: int
    total: int

    @property
    def previous(self) -> int | None:
        """The page before this one, or None on the first."""
        return self.number - 1 if self.number > 1 else None

    @property
    def next(self) -> int | None:
        """The page after this one, or None on the last."""
        return self.number + 1 if self.number < self.pages else None


def _jobs(count: int) -> str:
    return "1 job" if count == 1 else f"{count} jobs"


def parse_page(text: str | None) -> int:
    """``?page=`` as a page number (missing: 1); raises BadRequest for anything but a
    positive integer."""
    if text is None or text == "":
        return 1
    if not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise BadRequest(f"bad page number {text[:20]!r}: pages are numbered from 1")
    return int(text)


def _page_bounds(total: int, number: int) -> tuple[int, int]:
    """(first row index, page count); raises NotFound past the last page."""
    pages = max(1, math.ceil(total / PAGE_SIZE))
    if number > pages:
        raise NotFound(f"there is no page {number}: there are {pages}")
    return (number - 1) * PAGE_SIZE, pages


@dataclass(frozen=True)
class JobRow:
    """A job as the lists and the job page show it."""

    key: str
    jid: str
    jobtype: str
    queue: str
    args: str
    error: str
    retry_count: int | None
    when: float | None
    payload: dict[str, Any]

    @property
    def payload_json(self) -> str:
        """The whole payload, indented."""
        return json.dumps(self.payload, indent=2, sort_keys=True, default=str)

    @property
    def backtrace(self) -> list[str]:
        """The failure's backtrace lines (empty when there is none)."""
        failure = self.payload.get("failure")
        lines = failure.get("backtrace") if isinstance(failure, dict) else None
        return [str(line) for line in lines] if isinstance(lines, list) else []


def entry_key(entry: TimedEntry) -> str:
    """The key of a set entry in URLs and forms: ``score|jid`` (as Faktory's UI keys its
    sorted-set entries by time and jid)."""
    return f"{entry.score:.6f}|{entry.jid}"


def job_row(key: str, data: bytes, when: float | None) -> JobRow:
    """Summarise an encoded job for a list or a job page."""
    job = jobs_mod.decode_job(data)
    args = json.dumps(job.get("args", []), default=str)
    if len(args) > _ARGS_SHOWN:
        args = args[: _ARGS_SHOWN - 1] + "\u2026"
    failure = job.get("failure")
    error = ""
    retry_count: int | None = None
    if isinstance(failure, dict):
        error = f"{failure.get('errtype') or ''}: {failure.get('message') or ''}".strip(": ")
        count = failure.get("retry_count")
        retry_count = count if isinstance(count, int) else None
    return JobRow(
        key=key,
        jid=str(job.get("jid", "")),
        jobtype=str(job.get("jobtype", "")),
        queue=str(job.get("queue", "")),
        args=args,
        error=error,
        retry_count=retry_count,
        when=when,
        payload=job,
    )


def dashboard_counts(core: ServerCore) -> dict[str, int]:
    """The dashboard's numbers (the same as INFO's, read without building INFO)."""
    return {
        "processed": core.total_processed,
        "failed": core.total_failures,
        "enqueued": sum(len(q.jobs) for q in core.queues.values()),
        "busy": len(core.reservations),
        "scheduled": len(core.scheduled),
        "retries": len(core.retries),
        "dead": len(core.dead),
    }


# -- queues -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    """A queue on the queues page."""

    name: str
    size: int
    latency: float
    paused: bool


def queue_rows(core: ServerCore) -> list[QueueRow]:
    """Every known queue, by name, with its size, latency and paused state."""
    names = sorted(core.queues)
    latency = core.latency(names)
    return [
        QueueRow(name, len(core.queues[name].jobs), latency[name], core.queues[name].paused)
        for name in names
    ]


def _known_queue(core: ServerCore, name: str) -> None:
    if name not in core.queues:
        raise NotFound(f"there is no queue named {name[:100]!r}")


def queue_page(core: ServerCore, name: str, number: int) -> Page[JobRow]:
    """Page ``number`` of queue ``name``'s jobs, first in line first."""
    _known_queue(core, name)
    jobs = core.queues[name].jobs
    start, pages = _page_bounds(len(jobs), number)
    rows = [job_row(j.jid, j.data, j.enqueued) for j in islice(jobs, start, start + PAGE_SIZE)]
    return Page(rows, number, pages, len(jobs))


def queue_action(core: ServerCore, name: str, action: str, jids: Sequence[str]) -> str:
    """Run a queue button (pause, resume, clear, or delete the jobs ``jids``); returns
    what happened, in words."""
    _known_queue(core, name)
    if action not in _QUEUE_ACTIONS:
        raise BadRequest(f"unknown queue action {action[:40]!r}")
    if action == "pause":
        core.pause([name])
        return f"Paused queue {name}."
    if action == "resume":
        core.resume([name])
        return f"Resumed queue {name}."
    if action == "clear":
        return f"Cleared queue {name}: {_jobs(core.clear_queue(name))} deleted."
    if not jids:
        raise BadRequest("select the jobs to delete")
    return f"Deleted {_jobs(core.delete_queued(name, jids))} from queue {name}."


# -- retries, scheduled, dead -------------------------------------------------------------


def _timed_set(core: ServerCore, path: str) -> TimedSet:
    target = SET_PATHS.get(path)
    if target is None:
        raise NotFound(f"there is no set named {path[:40]!r}")
    return {"retries": core.retries, "scheduled": core.scheduled, "dead": core.dead}[target]


def set_page(core: ServerCore, path: str, number: int) -> Page[JobRow]:
    """Page ``number`` of a set: retries and scheduled soonest first, the dead newest first."""
    tset = _timed_set(core, path)
    start, pages = _page_bounds(len(tset), number)
    # Only the rows up to this page's end are ordered (a set may hold 100k jobs).
    pick = heapq.nlargest if path == "morgue" else heapq.nsmallest
    entries = pick(start + PAGE_SIZE, tset.entries.values(), key=lambda e: (e.score, e.rowid))
    rows = [job_row(entry_key(e), e.data, e.score) for e in entries[start:]]
    return Page(rows, number, pages, len(tset))


def _parse_key(key: str) -> tuple[float, str]:
    score_text, sep, jid = key.partition("|")
    try:
        score = float(score_text)
    except ValueError:
        score = math.nan
    if not sep or not jid or not math.isfinite(score):
        raise BadRequest(f"bad job key {key[:80]!r}: expected SCORE|JID")
    return score, jid


def _find(tset: TimedSet, keys: Iterable[str]) -> list[TimedEntry]:
    """The entries of ``tset`` with these keys (in one pass over the set); keys whose job
    has left the set find nothing."""
    wanted: dict[str, list[float]] = {}
    for key in keys:
        score, jid = _parse_key(key)
        wanted.setdefault(jid, []).append(score)
    if not wanted:
        return []
    return [
        entry
        for entry in tset.entries.values()
        if entry.jid in wanted and any(abs(entry.score - s) < 1e-5 for s in wanted[entry.jid])
    ]


def set_entry(core: ServerCore, path: str, key: str) -> JobRow:
    """The job of a set with this key; raises NotFound when it has left the set."""
    tset = _timed_set(core, path)
    found = _find(tset, [key])
    if not found:
        raise NotFound(f"no job with key {key[:80]!r} in {path}")
    return job_row(key, found[0].data, found[0].score)


def set_action(
    core: ServerCore, path: str, action: str, keys: Iterable[str], *, every: bool
) -> str:
    """Run a set button on the selected keys, or on every job of the set with ``every``
    (``kill`` then kills them all: Faktory 1.10.0's UI requeues them instead, a bug).
    Keys whose job has already left the set are skipped. Returns what happened."""
    tset = _timed_set(core, path)
    operation = SET_ACTIONS[path].get(action)
    if operation is None:
        raise BadRequest(f"{path} has no action {action[:40]!r}")
    target = SET_PATHS[path]
    before = len(tset)
    if every:
        core.mutate("clear" if operation == "discard" else operation, target, None)
    else:
        jids = [entry.jid for entry in _find(tset, keys)]
        if not jids:
            raise BadRequest("select the jobs to act on")
        core.mutate(operation, target, {"jids": jids})
    done = before - len(tset)
    verb = {"requeue": "Enqueued", "discard": "Deleted", "kill": "Killed"}[operation]
    return f"{verb} {_jobs(done)}."


# -- busy ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRow:
    """A connected worker process on the busy page."""

    wid: str
    hostname: str
    pid: int
    labels: list[str]
    started: float
    last_beat: float
    state: str
    rss_kb: int
    busy: int


@dataclass(frozen=True)
class BusyJobRow:
    """A job in progress: reserved by a worker and not yet ACKed or FAILed."""

    jid: str
    jobtype: str
    queue: str
    wid: str
    args: str
    started: float


def busy_workers(core: ServerCore) -> list[WorkerRow]:
    """The known worker processes, by hostname and pid, with how many jobs each holds."""
    holding: dict[str, int] = {}
    for res in core.reservations.values():
        holding[res.wid] = holding.get(res.wid, 0) + 1
    workers = sorted(core.workers.values(), key=lambda w: (w.hostname, w.pid, w.wid))
    return [
        WorkerRow(
            w.wid,
            w.hostname,
            w.pid,
            list(w.labels),
            w.started,
            w.last_beat,
            w.state,
            w.rss_kb,
            holding.get(w.wid, 0),
        )
        for w in workers
    ]


def busy_jobs(core: ServerCore) -> list[BusyJobRow]:
    """The jobs in progress, longest-running first."""
    rows = []
    for res in core.reservations.values():
        # A reservation keeps its expiry; the job started that many seconds before it.
        started = res.expires - jobs_mod.reservation_seconds(res.reserve_for)
        row = job_row(res.jid, res.data, None)
        rows.append(BusyJobRow(res.jid, row.jobtype, res.queue, res.wid, row.args, started))
    rows.sort(key=lambda r: r.started)
    return rows


def busy_action(core: ServerCore, action: str, wid: str) -> str:
    """Ask one worker process (or ``all``) to quiet or terminate; returns what happened."""
    if action not in _WORKER_ACTIONS:
        raise BadRequest(f"unknown worker action {action[:40]!r}")
    wids = list(core.workers) if wid == "all" else [wid]
    for one in wids:
        if not core.signal_worker(one, action):
            raise NotFound(f"no worker with wid {one[:80]!r} is connected")
    processes = "1 worker process" if len(wids) == 1 else f"{len(wids)} worker processes"
    return f"Asked {processes} to {action}."
