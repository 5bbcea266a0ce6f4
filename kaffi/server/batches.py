"""Faktory Enterprise batches for ``kaffi server --enterprise``: ``BATCH NEW``, ``OPEN``,
``COMMIT`` and ``STATUS``, the accounting of the jobs that carry ``custom.bid``, and the
success and complete callbacks (``shared/faktory/ENTERPRISE.md`` section 1; the choices
where it is unsure are written in ``docs/embedded-server.md``).

:class:`Batches` owns every batch of one server and decides when a callback is due; it
enqueues a callback through the ``push`` function it is given (the core's PUSH, wrapped
so that it never raises), so a callback is an ordinary job with its own queue and
retries. It learns about jobs from :class:`~kaffi.server.enterprise.Enterprise`, which
the core calls at PUSH, ACK, FAIL and FETCH, and reads nothing but the jobs' ``custom``:
it keeps no per-job records except the jids of the batch's jobs whose last run failed.

It must never do I/O, keep a clock of its own (times are the core's) or touch the core's
queues except through ``push``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
from collections.abc import Callable
from typing import Any

from kaffi.protocol.models import new_jid
from kaffi.server import gocompat
from kaffi.server.jobs import JobRejected, decode_fields, time_string, validate

__all__ = [
    "StoredBatch",
    "BatchError",
    "Batches",
    "UNCOMMITTED_TTL",
    "FINISHED_TTL",
    "UNFINISHED_TTL",
    "new_bid",
]

#: An uncommitted batch is forgotten this long after its last NEW or OPEN (the wiki).
UNCOMMITTED_TTL = 1800.0
#: A batch whose callbacks have all been ACKed is forgotten this long after the last one.
FINISHED_TTL = 1800.0
#: A committed batch that cannot finish yet (a dead job, a dead callback) is forgotten this
#: long after its last change: as long as Faktory keeps a dead job, which can still be
#: retried from the Dead set and let the batch succeed.
UNFINISHED_TTL = 180 * 86400.0

#: Callback states as BATCH STATUS writes them.
NOT_ENQUEUED, ENQUEUED, DONE = "", "1", "2"


class BatchError(Exception):
    """A BATCH command or a batch job the server refuses; ``str(exc)`` is the ``-ERR``
    text."""


def new_bid() -> str:
    """A new batch id: ``b-`` and 14 random URL-safe characters, like Enterprise's."""
    return "b-" + secrets.token_urlsafe(14)[:14]


def no_such_batch(bid: str) -> BatchError:
    """The error for an unknown batch id (Enterprise 1.9.2 and later, lowercase)."""
    return BatchError(f"no such batch {bid}")


@dataclasses.dataclass(slots=True)
class StoredBatch:
    """One batch as the server keeps it: its definition, its counts and the state of its
    callbacks (not :class:`kaffi.Batch`, the app's side of one)."""

    bid: str
    created: float
    description: str | None = None
    parent: str | None = None
    #: The callback jobs as validated at NEW (with their jid), or None.
    success: dict[str, Any] | None = None
    complete: dict[str, Any] | None = None
    committed: bool = False
    #: The last NEW or OPEN (an uncommitted batch expires from there) and the last change.
    opened: float = 0.0
    updated: float = 0.0
    total: int = 0
    pending: int = 0
    failed: int = 0
    complete_st: str = NOT_ENQUEUED
    success_st: str = NOT_ENQUEUED
    children: list[str] = dataclasses.field(default_factory=list)
    #: The jids counted in ``failed``: their last run failed and no run succeeded since.
    failing: set[str] = dataclasses.field(default_factory=set)
    #: When every callback had been ACKed (None: not yet).
    finished: float | None = None

    def status(self) -> dict[str, Any]:
        """BATCH STATUS's document, in the order of Enterprise's Go struct."""
        doc: dict[str, Any] = {"bid": self.bid}
        if self.parent:
            doc["parent_bid"] = self.parent
        if self.description:
            doc["description"] = self.description
        doc["created_at"] = time_string(int(self.created * 1e9))
        doc["total"] = self.total
        doc["pending"] = self.pending
        doc["failed"] = self.failed
        doc["complete_st"] = self.complete_st
        doc["success_st"] = self.success_st
        return doc

    def to_record(self) -> str:
        """The batch as JSON, for the storage layer."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["failing"] = sorted(self.failing)
        return json.dumps(fields, separators=(",", ":"))

    @classmethod
    def from_record(cls, text: str) -> StoredBatch:
        """A batch written by :meth:`to_record`."""
        fields = json.loads(text)
        fields["failing"] = set(fields.get("failing") or ())
        return cls(**fields)


def _callback(name: str, value: Any) -> dict[str, Any] | None:
    """A callback of BATCH NEW as a job ready to push later: checked as PUSH checks a job,
    with a jid minted when it has none, ``args`` ``[]`` and queue ``default`` by default."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BatchError(f"invalid {name} callback: a job object is required")
    try:
        job = decode_fields(value)
        if not job.get("jid"):
            job["jid"] = new_jid()
        if job.get("args") is None:
            job["args"] = []
        validate(job)
    except JobRejected as exc:
        raise BatchError(f"invalid {name} callback: {exc}") from None
    return job


class Batches:
    """Every batch of one server, and when their callbacks fire."""

    def __init__(
        self,
        push: Callable[[dict[str, Any]], None],
        changed: Callable[[str], None],
    ) -> None:
        #: bid -> batch.
        self.batches: dict[str, StoredBatch] = {}
        self._push = push
        self._changed = changed

    def _get(self, bid: str) -> StoredBatch:
        batch = self.batches.get(bid)
        if batch is None:
            raise no_such_batch(bid)
        return batch

    def _touch(self, batch: StoredBatch, now: float) -> None:
        batch.updated = now
        self._changed(batch.bid)

    # -- the BATCH command ----------------------------------------------------------------

    def command(self, sub: str, arg: str, now: float) -> str | None:
        """Run ``BATCH <sub> <arg>``: the bulk reply's text, or None for ``+OK``; raises
        :class:`BatchError` with the ``-ERR`` text."""
        if sub == "NEW":
            return self.new(arg, now)
        if sub in ("OPEN", "COMMIT", "STATUS"):
            bid = arg.strip()
            if not bid:
                raise BatchError(f"BATCH {sub} needs a batch id")
            if sub == "OPEN":
                return self.open(bid, now)
            if sub == "COMMIT":
                self.commit(bid, now)
                return None
            return gocompat.dumps(self._get(bid).status())
        raise BatchError(f"unknown batch subcommand {sub}")

    def new(self, text: str, now: float) -> str:
        """BATCH NEW: create a batch from its JSON definition; returns the new bid."""
        try:
            doc = gocompat.loads(text)
        except gocompat.GoJSONError as exc:
            raise BatchError(f"invalid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BatchError("BATCH NEW needs a JSON object")
        for name in ("bid", "parent_bid", "description"):
            if doc.get(name) is not None and not isinstance(doc[name], str):
                raise BatchError(f"invalid BATCH NEW: {name} must be a string")
        if doc.get("bid"):
            raise BatchError("BATCH NEW cannot choose its bid: the server assigns it")
        success = _callback("success", doc.get("success"))
        complete = _callback("complete", doc.get("complete"))
        if success is None and complete is None:
            raise BatchError("batch requires a success or complete callback")
        parent_bid = doc.get("parent_bid") or None
        parent = self._get(parent_bid) if parent_bid else None
        bid = new_bid()
        while bid in self.batches:
            bid = new_bid()
        batch = StoredBatch(bid, now, doc.get("description") or None, parent_bid, success, complete)
        batch.opened = now
        self.batches[bid] = batch
        self._touch(batch, now)
        if parent is not None:
            parent.children.append(bid)
            self._touch(parent, now)
        return bid

    def open(self, bid: str, now: float) -> str:
        """BATCH OPEN: the batch takes jobs again (before or after COMMIT, as Enterprise
        lets it); returns the bid. An uncommitted batch's expiry starts again."""
        batch = self._get(bid)
        batch.opened = now
        self._touch(batch, now)
        return bid

    def commit(self, bid: str, now: float) -> None:
        """BATCH COMMIT: the callbacks may fire once every job has run (at once for an
        empty batch). A second COMMIT changes nothing."""
        batch = self._get(bid)
        if not batch.committed:
            batch.committed = True
            self._touch(batch, now)
        self._settle(batch, now)

    # -- the jobs of a batch --------------------------------------------------------------

    def check_join(self, custom: dict[str, Any]) -> None:
        """Before a job is stored: a ``custom.bid`` must name a known batch."""
        bid = custom.get("bid")
        if isinstance(bid, str) and bid and bid not in self.batches:
            raise no_such_batch(bid)

    def joined(self, custom: dict[str, Any], now: float) -> None:
        """A job with ``custom.bid`` was stored: one more job, one more pending."""
        batch = self._of_job(custom)
        if batch is not None:
            batch.total += 1
            batch.pending += 1
            self._touch(batch, now)

    def succeeded(self, jid: str, custom: dict[str, Any], now: float) -> None:
        """A job was ACKed: a batch job is no longer pending (or failing, when an earlier
        run failed); a callback job is done (``"2"``)."""
        batch = self._of_job(custom)
        if batch is not None:
            if jid in batch.failing:
                batch.failing.discard(jid)
                batch.failed -= 1
            elif batch.pending > 0:
                batch.pending -= 1
            self._touch(batch, now)
            self._settle(batch, now)
        callback_of = custom.get("_bid")
        batch = self.batches.get(callback_of) if isinstance(callback_of, str) else None
        if batch is None:
            return
        # Matched by jid and state: a client may give both callbacks the same jid.
        complete, success = batch.complete, batch.success
        if complete is not None and complete["jid"] == jid and batch.complete_st == ENQUEUED:
            batch.complete_st = DONE
        elif success is not None and success["jid"] == jid and batch.success_st == ENQUEUED:
            batch.success_st = DONE
        else:
            return
        self._touch(batch, now)
        self._settle(batch, now)

    def failed(self, jid: str, custom: dict[str, Any], now: float) -> None:
        """A job's run failed (FAIL, an expired reservation, or dropped unrun because it
        expired): the first failure moves it from pending to failed; later ones of the
        same job change nothing. A failed callback stays ``"1"``."""
        batch = self._of_job(custom)
        if batch is None or jid in batch.failing:
            return
        batch.failing.add(jid)
        batch.failed += 1
        if batch.pending > 0:
            batch.pending -= 1
        self._touch(batch, now)
        self._settle(batch, now)

    def _of_job(self, custom: dict[str, Any]) -> StoredBatch | None:
        bid = custom.get("bid")
        return self.batches.get(bid) if isinstance(bid, str) and bid else None

    # -- callbacks ------------------------------------------------------------------------

    def _child_batches(self, batch: StoredBatch) -> list[StoredBatch]:
        # A child that is gone (it expired uncommitted) no longer holds its parent back.
        return [c for c in map(self.batches.get, batch.children) if c is not None]

    def _completed(self, batch: StoredBatch) -> bool:
        """Every job has run and every child batch has settled: complete is due."""
        return (
            batch.committed
            and batch.pending == 0
            and all(map(self._settled, self._child_batches(batch)))
        )

    def _complete_done(self, batch: StoredBatch) -> bool:
        return self._completed(batch) and (batch.complete is None or batch.complete_st == DONE)

    def _succeeded(self, batch: StoredBatch) -> bool:
        """Complete is done, no job is failing and every child succeeded: success is due."""
        return (
            self._complete_done(batch)
            and batch.failed == 0
            and all(map(self._success_done, self._child_batches(batch)))
        )

    def _success_done(self, batch: StoredBatch) -> bool:
        return self._succeeded(batch) and (batch.success is None or batch.success_st == DONE)

    def _blocked(self, batch: StoredBatch) -> bool:
        """A failing job here or below: success cannot fire now."""
        return batch.failed > 0 or any(map(self._blocked, self._child_batches(batch)))

    def _settled(self, batch: StoredBatch) -> bool:
        """What a parent waits for: the child's complete callback is done, and its success
        callback too unless a failing job keeps it from firing."""
        return self._complete_done(batch) and (self._success_done(batch) or self._blocked(batch))

    def _settle(self, batch: StoredBatch | None, now: float) -> None:
        """Fire what is due in this batch, then in its parents (each waits on its
        children)."""
        while batch is not None:
            complete, success = batch.complete, batch.success
            if complete is not None and not batch.complete_st and self._completed(batch):
                self._fire(batch, complete, "complete", now)
            if success is not None and not batch.success_st and self._succeeded(batch):
                self._fire(batch, success, "success", now)
            if batch.finished is None and self._success_done(batch):
                batch.finished = now
                self._touch(batch, now)
            if not batch.parent or not self._settled(batch):
                # The parent waits on this batch settling: until then nothing changed
                # for it.
                return
            batch = self.batches.get(batch.parent)

    def _fire(self, batch: StoredBatch, callback: dict[str, Any], name: str, now: float) -> None:
        """Enqueue a callback once: an ordinary job carrying ``custom._bid`` (and
        ``_pbid`` for a child batch), never ``custom.bid``."""
        if name == "complete":
            batch.complete_st = ENQUEUED
        else:
            batch.success_st = ENQUEUED
        self._touch(batch, now)
        job = copy.deepcopy(callback)
        custom = dict(job.get("custom") or {})
        custom.pop("bid", None)
        custom["_bid"] = batch.bid
        if batch.parent:
            custom["_pbid"] = batch.parent
        job["custom"] = custom
        self._push(job)

    # -- timers, FLUSH, storage -----------------------------------------------------------

    def prune(self, now: float) -> None:
        """Forget uncommitted batches :data:`UNCOMMITTED_TTL` after their last NEW or
        OPEN. A committed batch with no parent left is forgotten, with its child batches,
        :data:`FINISHED_TTL` after all its callbacks finished, or :data:`UNFINISHED_TTL`
        after its last change when they cannot all finish (a dead job). A child batch
        stays as long as its parent, which reads it."""
        expired: list[StoredBatch] = []
        gone: set[str] = set()
        for b in self.batches.values():
            if not b.committed:
                if now - b.opened >= UNCOMMITTED_TTL:
                    expired.append(b)
            elif b.parent is None or b.parent not in self.batches:
                finished = b.finished is not None and now - b.finished >= FINISHED_TTL
                if finished or now - b.updated >= UNFINISHED_TTL:
                    gone.update(self._subtree(b))
        gone.update(b.bid for b in expired)
        for bid in gone:
            del self.batches[bid]
            self._changed(bid)
        for child in expired:
            # An expired child no longer holds its parent back: the parent may be due.
            parent = self.batches.get(child.parent) if child.parent else None
            if parent is not None and child.bid in parent.children:
                parent.children.remove(child.bid)
                self._touch(parent, now)
                self._settle(parent, now)

    def _subtree(self, batch: StoredBatch) -> list[str]:
        """The bids of ``batch`` and of every batch below it."""
        found = [batch.bid]
        for child in self._child_batches(batch):
            found.extend(self._subtree(child))
        return found

    def clear(self) -> None:
        """FLUSH: no batches."""
        self.batches.clear()

    def record(self, bid: str) -> str | None:
        """The stored form of batch ``bid`` (None: it is gone)."""
        batch = self.batches.get(bid)
        return None if batch is None else batch.to_record()

    def load(self, text: str) -> None:
        """Take back a batch from storage."""
        batch = StoredBatch.from_record(text)
        self.batches[batch.bid] = batch
