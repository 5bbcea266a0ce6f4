"""The job options a task's defaults and a job builder both hold, written once.

:class:`~kaffi.app.task.TaskOptions` (what ``@app.task(...)`` and ``.options(...)`` set)
and :class:`~kaffi.client.job.JobBuilder` (``client.job(...)``) carry the same options:
queue, retry, reserve_for, backtrace, custom, at, jid and Faktory Enterprise's
unique_for, unique_until, expires_at, expires_in and track. :class:`JobOptionFields` is
the one list of those fields; :class:`EnterpriseOptionArgs` the Enterprise ones as
keywords, which ``@app.task``, ``TaskOptions`` and the builders take through
``**options: Unpack[...]`` (so mypy checks them as if listed one by one);
:meth:`JobOptionFields.enterprise_keys` turns them into ``custom`` keys through
:func:`kaffi.protocol.enterprise.enterprise_custom`.

This module holds values and checks them; it never sends anything.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypedDict

from kaffi.protocol.enterprise import enterprise_custom

__all__ = ["ENTERPRISE_OPTIONS", "EnterpriseOptionArgs", "JobOptionFields"]

#: The Faktory Enterprise options (see ``docs/enterprise.md``): None switches each off.
ENTERPRISE_OPTIONS = ("unique_for", "unique_until", "expires_at", "expires_in", "track")


class EnterpriseOptionArgs(TypedDict, total=False):
    """Faktory Enterprise's job options as keywords (None, or left out: off)."""

    unique_for: float | timedelta | None
    unique_until: str | None
    expires_at: datetime | str | None
    expires_in: float | timedelta | None
    track: bool | None


class JobOptionFields:
    """The fields of a job's options, shared by a task's options and a job builder
    (each subclass sets them in its ``__init__``; the Enterprise ones through
    :meth:`_set_enterprise`)."""

    __slots__ = (
        "at",
        "backtrace",
        "custom",
        "jid",
        "queue",
        "reserve_for",
        "retry",
        *ENTERPRISE_OPTIONS,
    )

    queue: str
    retry: int
    reserve_for: int | None
    backtrace: int | None
    custom: dict[str, Any] | None
    at: datetime | str | None
    jid: str | None
    unique_for: float | timedelta | None
    unique_until: str | None
    expires_at: datetime | str | None
    expires_in: float | timedelta | None
    track: bool | None

    def _set_enterprise(self, options: EnterpriseOptionArgs) -> None:
        """Take the Enterprise keywords, refusing any other name as a call would."""
        if not options:
            # The usual case, and a builder is made for every push: no set arithmetic.
            self.unique_for = self.unique_until = self.expires_at = self.expires_in = None
            self.track = None
            return
        unknown = options.keys() - _ENTERPRISE_NAMES
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got an unexpected keyword argument {min(unknown)!r}"
            )
        self.unique_for = options.get("unique_for")
        self.unique_until = options.get("unique_until")
        self.expires_at = options.get("expires_at")
        self.expires_in = options.get("expires_in")
        self.track = options.get("track")

    def enterprise_keys(self, owner: str) -> dict[str, Any]:
        """The ``custom`` keys of unique_for, unique_until, expires_at and track, checked
        (``owner`` starts error messages); expires_in is the caller's, as it counts from
        each push."""
        return enterprise_custom(
            unique_for=self.unique_for,
            unique_until=self.unique_until,
            expires_at=self.expires_at,
            track=self.track,
            owner=owner,
        )


_ENTERPRISE_NAMES = frozenset(ENTERPRISE_OPTIONS)
