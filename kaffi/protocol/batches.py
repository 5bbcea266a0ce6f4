"""Faktory Enterprise batches on the wire, without I/O: the ``BATCH NEW`` definition, the
batch id rule, and the typed ``BATCH STATUS`` reply.

The facts (field names, the callback states ``""``/``"1"``/``"2"``, what is optional) are
those of ``shared/faktory/ENTERPRISE.md`` section 1, which cites the Faktory wiki
(Ent-Batches) and the Go, Ruby and Rust clients. The client encodes its BATCH commands
from here; this module never sends anything.

Which batch a push joins. Enterprise adds a job to a batch when the job carries
``custom.bid``. The Ruby client stamps that key on every push made inside
``batch.jobs { }`` through a thread-local; kaffi keeps the open batch's id in a context
variable, :data:`current_bid`, set by the app's ``with app.batch(...)`` block (its one
piece of ambient state, kept here so that the app and the client, which both stamp
pushes, share it without the app importing the client). A context variable follows
threads and asyncio alike: code in the block sees it, asyncio tasks created in the block
inherit it, other threads and tasks do not. The rule for stamping is :func:`join_current`
/ :func:`join_model`: a job that names a batch itself keeps it.
"""

from __future__ import annotations

import contextvars
import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from kaffi.errors import ValidationError
from kaffi.protocol.models import EncodedJob, JobPayload
from kaffi.protocol.rfc3339 import parse_rfc3339

__all__ = [
    "BatchDefinition",
    "BatchStatus",
    "CallbackState",
    "batch_new_document",
    "check_bid",
    "current_bid",
    "join",
    "join_current",
    "join_model",
]


#: The id of the batch whose block the current code runs in, or None.
current_bid: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kaffi_batch_bid", default=None
)


def join(payload: dict[str, Any], bid: str) -> dict[str, Any]:
    """``payload`` with ``custom.bid = bid`` (a new dict: the caller's ``custom`` may be
    shared with a task's template)."""
    custom = payload.get("custom")
    joined = {**custom, "bid": bid} if isinstance(custom, dict) else {"bid": bid}
    return {**payload, "custom": joined}


def join_current(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` stamped with the current block's batch, if any; a payload whose
    ``custom`` names a batch already keeps it."""
    bid = current_bid.get()
    if bid is None:
        return payload
    custom = payload.get("custom")
    if isinstance(custom, dict) and "bid" in custom:
        return payload
    return join(payload, bid)


def join_model(job: JobPayload | EncodedJob, bid: str | None) -> JobPayload | EncodedJob:
    """:func:`join` for what the client pushes, keeping a batch the job names itself. An
    ``EncodedJob`` is sent as it is: the app builds those, stamped before encoding."""
    if bid is None or type(job) is EncodedJob:
        return job
    assert isinstance(job, JobPayload)
    custom = job.custom
    if custom is not None and "bid" in custom:
        return job
    return job.model_copy(update={"custom": {**(custom or {}), "bid": bid}})


def check_bid(bid: object, field: str = "bid") -> str:
    """``bid`` if it can name a batch on a command line (a non-empty string without
    whitespace), else ValidationError naming ``field``. Batch ids are opaque: Enterprise
    mints ``b-`` and 14 URL-safe characters, but nothing else is assumed."""
    if not isinstance(bid, str) or not bid or any(c.isspace() for c in bid):
        raise ValidationError(
            f"{field} must be a batch id (a non-empty string without spaces), got {bid!r}",
            field=field,
        )
    return bid


class BatchDefinition(BaseModel):
    """What ``BATCH NEW`` creates: a ``description`` (shown in the Web UI), a
    ``parent_bid`` (makes it a child batch), and the ``success`` and ``complete``
    callbacks, ordinary job payloads; at least one callback is required (wiki)."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    parent_bid: str | None = None
    success: JobPayload | None = None
    complete: JobPayload | None = None


def _callback(job: JobPayload) -> dict[str, Any]:
    doc = job.to_wire()
    custom = doc.get("custom")
    if isinstance(custom, dict) and "bid" in custom:
        # A callback built inside another batch's block would carry that batch's bid; a
        # callback is no member of any batch (Enterprise pushes it with custom._bid).
        custom = {k: v for k, v in custom.items() if k != "bid"}
        if custom:
            doc["custom"] = custom
        else:
            del doc["custom"]
    return doc


def batch_new_document(definition: BatchDefinition) -> dict[str, Any]:
    """The JSON of ``BATCH NEW``: ``description`` and ``parent_bid`` when given,
    ``success`` and ``complete`` as job objects (each keeps its jid, so the caller knows
    the callbacks' jids). Refuses a definition without a callback, as the wiki requires
    one and the Ruby client refuses it locally ("Callback required")."""
    if definition.success is None and definition.complete is None:
        raise ValidationError(
            "a batch needs a success or a complete callback (or both): pass success= or"
            " complete=, e.g. success=report.job()",
            field="success",
        )
    doc: dict[str, Any] = {}
    if definition.description is not None:
        doc["description"] = definition.description
    if definition.parent_bid is not None:
        doc["parent_bid"] = check_bid(definition.parent_bid, "parent_bid")
    if definition.success is not None:
        doc["success"] = _callback(definition.success)
    if definition.complete is not None:
        doc["complete"] = _callback(definition.complete)
    return doc


class CallbackState(str, enum.Enum):
    """Where a batch callback is, as ``BATCH STATUS`` reports it (``complete_st`` and
    ``success_st``)."""

    #: ``""``: not enqueued yet, or the batch has no such callback.
    NOT_ENQUEUED = "not enqueued"
    #: ``"1"``: pushed to its queue; it stays so while the callback job fails and retries.
    ENQUEUED = "enqueued"
    #: ``"2"``: the callback job was ACKed.
    DONE = "done"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        # The same text in f-strings on every Python (3.12 changed how mixed-in enums
        # format).
        return format(self.value, spec)


#: The wire values of a callback's state (ENTERPRISE.md section 1; faktory-rs reads the
#: same three and nothing else).
_WIRE_STATES = {
    "": CallbackState.NOT_ENQUEUED,
    "1": CallbackState.ENQUEUED,
    "2": CallbackState.DONE,
}


class BatchStatus(BaseModel):
    """A batch as ``BATCH STATUS`` reports it.

    ``total`` counts the jobs ever added (reopens included), ``pending`` those not
    finished yet, ``failed`` those whose execution failed. ``complete_st`` and
    ``success_st`` are the callbacks' states as sent (``""``, ``"1"``, ``"2"``); read
    them as :class:`CallbackState` through :attr:`complete` and :attr:`success`.
    ``parent_bid``, ``description`` and ``created_at`` are None when the server leaves
    them out (or sends ``""``). Fields a server adds are kept (``model_extra``).
    """

    model_config = ConfigDict(extra="allow")

    bid: str
    parent_bid: str | None = None
    description: str | None = None
    created_at: datetime | None = None
    total: int = 0
    pending: int = 0
    failed: int = 0
    complete_st: str = ""
    success_st: str = ""

    @field_validator("parent_bid", mode="before")
    @classmethod
    def _no_parent(cls, value: Any) -> Any:
        # Go's client sends parent_bid with omitempty; "" means no parent all the same.
        return None if value == "" else value

    @field_validator("created_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if value == "":
            return None
        if isinstance(value, str):
            return parse_rfc3339(value, go=True)
        return value

    @field_validator("complete_st", "success_st", mode="before")
    @classmethod
    def _state(cls, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value not in _WIRE_STATES:
            raise ValueError(f'a callback state is "", "1" or "2", got {value!r}')
        return value

    @property
    def complete(self) -> CallbackState:
        """The complete callback's state."""
        return _WIRE_STATES[self.complete_st]

    @property
    def success(self) -> CallbackState:
        """The success callback's state."""
        return _WIRE_STATES[self.success_st]

    def __str__(self) -> str:
        return (
            f"batch {self.bid}: {self.total} job{'s' if self.total != 1 else ''},"
            f" {self.pending} pending, {self.failed} failed;"
            f" complete callback {self.complete}, success callback {self.success}"
        )
