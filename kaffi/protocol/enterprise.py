"""Faktory Enterprise on the wire, without I/O: the ``custom`` keys of unique, expiring and
tracked jobs, the TRACK SET document, and the typed TRACK GET reply.

Every key name and format here follows ``shared/faktory/ENTERPRISE.md``, which cites the
Faktory wiki (Ent-Unique-Jobs, Ent-Expiring-Jobs, Ent-Tracking) and the Go and Ruby
clients. Both the app (task options, the Job builder) and the client (TRACK) build their
wire values here, so there is one spelling of each key. This module never sends anything.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from kaffi.errors import ValidationError
from kaffi.protocol.rfc3339 import (
    RFC3339Error,
    format_rfc3339,
    parse_optional_rfc3339,
    parse_rfc3339,
)

__all__ = [
    "Progress",
    "UNIQUE_UNTIL",
    "UniqueUntil",
    "check_expires_in",
    "enterprise_custom",
    "expires_at_from",
    "track_set_document",
]

UniqueUntil = Literal["success", "start"]
#: The two lock releases Enterprise knows: at the job's ACK (the default) or its FETCH.
UNIQUE_UNTIL = ("success", "start")


def _seconds(value: object, field: str, owner: str) -> float:
    """A positive, finite number of seconds from a number or a timedelta."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValidationError(
            f"{owner}bad option {field}: expected seconds or a timedelta, got {value!r}",
            field=field,
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValidationError(
            f"{owner}bad option {field}: must be a finite number of seconds above 0, got {value!r}",
            field=field,
        )
    return seconds


def check_expires_in(value: float | timedelta | None, owner: str = "") -> timedelta | None:
    """``expires_in`` as a timedelta (seconds or a timedelta above 0), or None."""
    if value is None:
        return None
    return timedelta(seconds=_seconds(value, "expires_in", owner))


def expires_at_from(expires_in: timedelta, now: datetime | None = None) -> str:
    """The ``custom.expires_at`` of a job pushed now that expires ``expires_in`` later.
    Written as an absolute time, as the Go client's ``SetExpiresIn`` does: whether
    Enterprise honours ``custom.expires_in`` outside cron is not documented (ENTERPRISE.md
    section 4)."""
    return format_rfc3339((now or datetime.now(timezone.utc)) + expires_in)


def enterprise_custom(
    *,
    unique_for: float | timedelta | None = None,
    unique_until: str | None = None,
    expires_at: datetime | str | None = None,
    track: bool | None = None,
    owner: str = "",
) -> dict[str, Any]:
    """The ``custom`` keys for these options, checked (``owner`` starts error messages,
    e.g. ``"task 'x': "``). Absent options add no key.

    - ``unique_for``: seconds as a JSON number; a string is not honoured by Enterprise
      (wiki Ent-Unique-Jobs, its Rails note). Whole seconds are sent as an integer.
    - ``unique_until``: ``"success"`` (Enterprise's default) or ``"start"``; only with
      ``unique_for`` (the wiki: a time limit is mandatory for a unique job).
    - ``expires_at``: an RFC 3339 time (wiki Ent-Expiring-Jobs); a datetime is written in
      UTC, a string must parse as RFC 3339.
    - ``track``: ``custom.track = 1`` (wiki Ent-Tracking).
    """
    out: dict[str, Any] = {}
    if unique_for is not None:
        seconds = _seconds(unique_for, "unique_for", owner)
        out["unique_for"] = int(seconds) if seconds.is_integer() else seconds
    if unique_until is not None:
        if unique_until not in UNIQUE_UNTIL:
            raise ValidationError(
                f'{owner}bad option unique_until: must be "success" or "start",'
                f" got {unique_until!r}",
                field="unique_until",
            )
        if unique_for is None:
            raise ValidationError(
                f"{owner}bad option unique_until: it needs unique_for (a unique job must"
                " have a time limit)",
                field="unique_until",
            )
        out["unique_until"] = unique_until
    if expires_at is not None:
        out["expires_at"] = _expires_at(expires_at, owner)
    if track is not None and not isinstance(track, bool):
        raise ValidationError(
            f"{owner}bad option track: must be True or False, got {track!r}", field="track"
        )
    if track:
        out["track"] = 1
    return out


def _expires_at(value: object, owner: str) -> str:
    if isinstance(value, datetime):
        return format_rfc3339(value)
    if isinstance(value, str):
        try:
            parse_rfc3339(value)
        except RFC3339Error as exc:
            raise ValidationError(
                f"{owner}bad option expires_at: not an RFC 3339 time: {exc}", field="expires_at"
            ) from None
        return value
    raise ValidationError(
        f"{owner}bad option expires_at: expected a datetime or an RFC 3339 string, got {value!r}",
        field="expires_at",
    )


def track_set_document(
    jid: str,
    percent: int | None = None,
    desc: str | None = None,
    reserve_until: datetime | timedelta | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The JSON of ``TRACK SET``: ``jid``, and ``percent`` (0 to 100), ``desc`` and
    ``reserve_until`` (RFC 3339; a timedelta counts from now) when given (wiki
    Ent-Tracking; the Go client omits absent fields the same way)."""
    if not isinstance(jid, str) or not jid:
        raise ValidationError(f"track: jid must be a non-empty string, got {jid!r}", field="jid")
    doc: dict[str, Any] = {"jid": jid}
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValidationError(
                f"track: percent must be an integer from 0 to 100, got {percent!r}",
                field="percent",
            )
        doc["percent"] = percent
    if desc is not None:
        if not isinstance(desc, str):
            raise ValidationError(f"track: desc must be a string, got {desc!r}", field="desc")
        doc["desc"] = desc
    if reserve_until is not None:
        current = now or datetime.now(timezone.utc)
        if isinstance(reserve_until, timedelta):
            until = current + reserve_until
        elif isinstance(reserve_until, datetime):
            until = reserve_until
        else:
            raise ValidationError(
                f"track: reserve_until must be a datetime or a timedelta, got {reserve_until!r}",
                field="reserve_until",
            )
        if until.tzinfo is None:
            until = until.astimezone()
        if until <= current:
            # Enterprise can only extend a reservation (wiki); the Ruby client refuses a
            # past time locally too.
            raise ValidationError(
                f"track: reserve_until must be in the future, got {reserve_until!r}",
                field="reserve_until",
            )
        doc["reserve_until"] = format_rfc3339(until)
    return doc


class Progress(BaseModel):
    """A job's tracked progress, as ``TRACK GET`` reports it.

    ``state`` is one of ``unknown`` (never pushed with ``track``, or forgotten),
    ``enqueued``, ``working``, ``success``, ``failed`` or ``dead``; ``percent`` and ``desc``
    are the last ``TRACK SET`` values (None until one was sent); ``updated_at`` is when
    the record last changed (None when the server sends ``""``, for unknown jobs).
    """

    model_config = ConfigDict(extra="allow")

    jid: str
    state: str
    percent: int | None = None
    desc: str | None = None
    updated_at: datetime | None = None

    @field_validator("updated_at", mode="before")
    @classmethod
    def _empty_time(cls, value: Any) -> Any:
        # Enterprise sends "" for a job it knows nothing about (faktory-rs observed it).
        return parse_optional_rfc3339(value, go=True)
