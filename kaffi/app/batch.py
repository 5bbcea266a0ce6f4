"""Faktory Enterprise batches for an App: ``with app.batch(...) as batch:``.

A :class:`Batch` is a context manager, for ``with`` and ``async with`` alike. Entering it
creates the batch (``BATCH NEW``), or reopens it (``BATCH OPEN``) when it has a bid already
(:meth:`Batch.open`, ``current_job().batch``, or a second block of the same Batch); while
the block runs, every push made from it carries ``custom.bid`` (the context variable
:data:`kaffi.protocol.batches.current_bid`, read by :mod:`kaffi.app.push` and the
clients); leaving the block normally commits the batch (``BATCH COMMIT``), after which
Enterprise fires the callbacks once the jobs have run.

An exception in the block leaves the batch uncommitted, on purpose: its callbacks never
fire for a half-filled batch, and Enterprise drops an uncommitted batch after 30 minutes.
The Batch says so (a warning naming the bid in the ``kaffi.batch`` log, and a note on the
exception where Python has ``add_note``) and lets the exception go on.

In a testing mode (``app.testing.inline()``/``fake()``) no server is involved: the Batch
mints a bid, pushes carry it as usual, and ``app.testing.batches`` records each batch's
definition and whether it was committed (callbacks are not run).

This module talks to the server only through the App's clients.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kaffi.app import push
from kaffi.errors import ConfigurationError
from kaffi.protocol.batches import (
    BatchDefinition,
    BatchStatus,
    batch_new_document,
    check_bid,
    current_bid,
    join,
)
from kaffi.protocol.models import EncodedJob, JobPayload

if TYPE_CHECKING:
    from kaffi.app.app import App
    from kaffi.client.batch import CallbackLike
    from kaffi.client.job import JobBuilder

__all__ = ["Batch"]

log = logging.getLogger("kaffi.batch")


class Batch:
    """A Faktory Enterprise batch of this App (``app.batch(...)``, ``app.batch_async(...)``,
    ``app.batch_open(bid)``, :meth:`Batch.open`, ``current_job().batch``).

    ``bid`` is the batch's id: None until the first block creates the batch.
    ``definition`` is what ``BATCH NEW`` sends (None for a batch opened by its bid).
    ``committed`` turns True each time a block commits it, and False while a block
    has it open.
    """

    def __init__(
        self,
        app: App,
        *,
        bid: str | None = None,
        description: str | None = None,
        parent: Batch | str | None = None,
        success: CallbackLike | None = None,
        complete: CallbackLike | None = None,
    ) -> None:
        self.app = app
        self.bid = check_bid(bid) if bid is not None else None
        self.definition: BatchDefinition | None = None
        if bid is None:
            from kaffi.client.batch import batch_definition

            # Checked now (a missing or bad callback), where the block begins.
            self.definition = batch_definition(
                description=description,
                parent_bid=_parent_bid(parent),
                success=success,
                complete=complete,
            )
            batch_new_document(self.definition)
        elif any(given is not None for given in (description, parent, success, complete)):
            raise ConfigurationError(
                f"batch {bid}: an existing batch is opened by its bid alone; its description,"
                " parent and callbacks were set when it was created"
            )
        self.committed = False
        self._tokens: list[contextvars.Token[str | None]] = []

    @classmethod
    def open(cls, bid: str, app: App | None = None) -> Batch:
        """The existing batch ``bid``, to add jobs to: ``with Batch.open(bid):`` sends
        ``BATCH OPEN``, the block's pushes join it, and leaving commits it again.
        ``app`` defaults to the module-level default App (``kaffi.app.default_app()``)."""
        if app is None:
            from kaffi.app import default_app

            app = default_app()
        return cls(app, bid=bid)

    # -- the block -------------------------------------------------------------------------

    def __enter__(self) -> Batch:
        testing = self.app.delivery is not None
        if testing:
            bid = self.app.testing.begin_batch(self.bid, self.definition)
        elif self.bid is None:
            assert self.definition is not None
            bid = self.app.client.batch_new(self.definition)
        else:
            bid = self.app.client.batch_open(self.bid)
        self._begin(bid)
        return self

    async def __aenter__(self) -> Batch:
        if self.app.delivery is not None:
            bid = self.app.testing.begin_batch(self.bid, self.definition)
        elif self.bid is None:
            assert self.definition is not None
            bid = await self.app.async_client.batch_new(self.definition)
        else:
            bid = await self.app.async_client.batch_open(self.bid)
        self._begin(bid)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._end(exc_info[1]):
            self.commit()

    async def __aexit__(self, *exc_info: object) -> None:
        if self._end(exc_info[1]):
            await self.commit_async()

    def _begin(self, bid: str) -> None:
        self.bid = bid
        self.committed = False
        self._tokens.append(current_bid.set(bid))

    def _end(self, exc: object) -> bool:
        """Leave the block (``exc``: what ``__exit__`` was given as the exception);
        whether to commit (no exception)."""
        current_bid.reset(self._tokens.pop())
        if exc is None:
            return True
        note = (
            f"kaffi: batch {self.bid} was left uncommitted because the block raised; its"
            " callbacks will not fire unless it is opened and committed again (Faktory"
            " drops an uncommitted batch after 30 minutes)"
        )
        log.warning("%s (%s: %s)", note.removeprefix("kaffi: "), type(exc).__name__, exc)
        add_note = getattr(exc, "add_note", None)
        if add_note is not None:  # Python 3.11 and later
            add_note(note)
        return False

    @property
    def is_open(self) -> bool:
        """True inside the batch's block (pushes join it)."""
        return bool(self._tokens)

    def commit(self) -> None:
        """``BATCH COMMIT`` (leaving the block does it): every job has been added, the
        callbacks fire once they have run. Needs the bid (after a block began)."""
        bid = self._require_bid("commit()")
        if self.app.delivery is not None:
            self.app.testing.commit_batch(bid)
        else:
            self.app.client.batch_commit(bid)
        self.committed = True

    async def commit_async(self) -> None:
        """:meth:`commit` for asyncio code."""
        bid = self._require_bid("commit_async()")
        if self.app.delivery is not None:
            self.app.testing.commit_batch(bid)
        else:
            await self.app.async_client.batch_commit(bid)
        self.committed = True

    # -- adding prepared jobs --------------------------------------------------------------

    def add(self, job: JobBuilder | JobPayload | EncodedJob | Mapping[str, Any]) -> str | None:
        """Push a prepared job (a Job builder such as ``task.job(...)``, a payload or a
        dict) into this batch, through the App's push middleware and testing modes as
        ``.delay()`` would; returns its jid (None when a middleware dropped it).

        Inside the batch's block it is one push. Outside it, the batch is reopened for it
        (``BATCH OPEN``, the push, ``BATCH COMMIT``), as the Ruby client does for a job
        adding to its own batch (``current_job().batch.add(...)``)."""
        payload, task = self._payload(job)
        if self.is_open:
            return push.deliver(self.app, payload, task)
        self._require_bid("add()")
        with self:
            return push.deliver(self.app, payload, task)

    async def add_async(
        self, job: JobBuilder | JobPayload | EncodedJob | Mapping[str, Any]
    ) -> str | None:
        """:meth:`add` for asyncio code."""
        payload, task = self._payload(job)
        if self.is_open:
            return await push.deliver_async(self.app, payload, task)
        self._require_bid("add_async()")
        async with self:
            return await push.deliver_async(self.app, payload, task)

    def _payload(
        self, job: JobBuilder | JobPayload | EncodedJob | Mapping[str, Any]
    ) -> tuple[dict[str, Any], Any]:
        from kaffi.client.job import as_payload

        payload = as_payload(job).to_wire()
        bid = self._require_bid("add()")
        return join(payload, bid), self.app.tasks.get(payload.get("jobtype", ""))

    def _require_bid(self, what: str) -> str:
        if self.bid is None:
            raise ConfigurationError(
                f"batch.{what}: the batch does not exist yet; enter its block first"
                " (`with app.batch(...) as batch:`)"
            )
        return self.bid

    # -- reading ---------------------------------------------------------------------------

    def status(self) -> BatchStatus:
        """``BATCH STATUS`` of this batch (see :meth:`kaffi.App.batch_status`)."""
        return self.app.batch_status(self._require_bid("status()"))

    async def status_async(self) -> BatchStatus:
        """:meth:`status` for asyncio code."""
        return await self.app.batch_status_async(self._require_bid("status_async()"))

    def __repr__(self) -> str:
        state = "open" if self.is_open else "committed" if self.committed else "not committed"
        return f"<Batch {self.bid or '(not created)'} {state}>"


def _parent_bid(parent: Batch | str | None) -> str | None:
    if parent is None:
        return None
    if isinstance(parent, Batch):
        if parent.bid is None:
            raise ConfigurationError(
                "batch parent= is a Batch that does not exist yet: create the child inside"
                " the parent's block"
            )
        return parent.bid
    return check_bid(parent, "parent")
