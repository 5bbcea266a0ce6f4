"""Faktory Enterprise batch definitions from what a caller has at hand: job builders
(``task.job(...)``), payloads or dicts as the callbacks. ``BATCH NEW`` takes them as job
objects (:mod:`kaffi.protocol.batches`); this module turns them into payloads the way a
push would (:func:`~kaffi.client.job.as_payload`). No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kaffi.client.job import JobBuilder, as_payload
from kaffi.errors import ValidationError
from kaffi.protocol.batches import BatchDefinition, check_bid
from kaffi.protocol.models import EncodedJob, JobPayload

__all__ = ["CallbackLike", "batch_definition", "callback_payload"]

CallbackLike = JobBuilder | JobPayload | EncodedJob | Mapping[str, Any]


def callback_payload(job: CallbackLike, which: str) -> JobPayload:
    """A batch callback as a payload, from a builder (``task.job(...)``), a payload, an
    encoded job or a dict (validated as a push would)."""
    try:
        payload = as_payload(job)
    except ValidationError as exc:
        raise ValidationError(f"batch {which} callback: {exc}", field=which) from None
    if isinstance(payload, EncodedJob):
        return JobPayload.from_wire(payload.data)
    return payload


def batch_definition(
    *,
    description: str | None = None,
    parent_bid: str | None = None,
    success: CallbackLike | None = None,
    complete: CallbackLike | None = None,
) -> BatchDefinition:
    """A :class:`~kaffi.protocol.batches.BatchDefinition` from job builders (or payloads
    or dicts); ``parent_bid`` is checked as a batch id."""
    if description is not None and not isinstance(description, str):
        raise ValidationError(
            f"a batch description must be a string, got {description!r}", field="description"
        )
    return BatchDefinition(
        description=description,
        parent_bid=check_bid(parent_bid, "parent_bid") if parent_bid is not None else None,
        success=callback_payload(success, "success") if success is not None else None,
        complete=callback_payload(complete, "complete") if complete is not None else None,
    )
