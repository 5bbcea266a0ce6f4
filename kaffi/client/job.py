"""The job builder: :class:`Job` (sync) and :class:`AsyncJob` (asyncio).

A builder is a plain, mutable bag of the job's settings bound to a client, as in the Node
client: ``job = client.job("send_email", "a@b.c"); job.queue = "mail"; job.push()``.
Nothing is validated until :meth:`payload` (called by ``push``) builds the
:class:`~kaffi.protocol.models.JobPayload`, which refuses bad values with a
:class:`~kaffi.errors.ValidationError` naming the field, before anything is sent.

This module also owns :func:`as_payload`, the one place that turns whatever a caller hands
to ``push``/``push_bulk`` (a builder, a payload or a dict) into a payload.

A builder never talks to the server on its own: only ``push()`` does, through its client.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from kaffi.errors import ConfigurationError, ValidationError
from kaffi.protocol.enterprise import check_expires_in, expires_at_from
from kaffi.protocol.models import (
    DEFAULT_RESERVE_FOR,
    DEFAULT_RETRY,
    EncodedJob,
    JobPayload,
    new_jid,
)
from kaffi.protocol.options import EnterpriseOptionArgs, JobOptionFields

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Job", "AsyncJob", "JobBuilder", "JobPusher", "AsyncJobPusher", "as_payload"]


class JobPusher(Protocol):
    """What a :class:`Job` is bound to: a :class:`~kaffi.client.Client`, or anything with
    its ``push``. (A protocol, so this module needs no import of the clients.)"""

    def push(self, job: Job, /) -> str:
        """PUSH ``job``; its jid."""


class AsyncJobPusher(Protocol):
    """What an :class:`AsyncJob` is bound to: an :class:`~kaffi.client.AsyncClient`."""

    async def push(self, job: AsyncJob, /) -> str:
        """PUSH ``job``; its jid."""


class JobBuilder(JobOptionFields):
    """The settings both builders share, and how they become a payload."""

    __slots__ = ("args", "jobtype", "priority")

    jid: str

    def __init__(
        self,
        jobtype: str,
        *args: Any,
        jid: str | None = None,
        queue: str = "default",
        priority: int | None = None,
        retry: int = DEFAULT_RETRY,
        at: datetime | str | None = None,
        reserve_for: int | None = DEFAULT_RESERVE_FOR,
        custom: dict[str, Any] | None = None,
        backtrace: int | None = None,
        **enterprise: Unpack[EnterpriseOptionArgs],
    ) -> None:
        self.jobtype = jobtype
        self.args: list[Any] = list(args)
        self.jid = new_jid() if jid is None else jid
        self.queue = queue
        #: Kept for the Node client's API; the open-source Faktory server drops it.
        self.priority = priority
        self.retry = retry
        self.at = at
        self.reserve_for = reserve_for
        self.custom = custom
        self.backtrace = backtrace
        # Written into ``custom`` by :meth:`payload` (see JobOptionFields.enterprise_keys).
        self._set_enterprise(enterprise)

    @staticmethod
    def new_jid() -> str:
        """A fresh random job id (24 hex characters)."""
        return new_jid()

    def _custom(self) -> dict[str, Any] | None:
        """``custom`` with the Enterprise options' keys added (they win over the same keys
        in ``custom``); ``expires_in`` becomes an ``expires_at`` counted from now."""
        if self.expires_at is not None and self.expires_in is not None:
            raise ValidationError(
                "invalid job: give expires_at or expires_in, not both", field="expires_in"
            )
        extra = self.enterprise_keys("invalid job: ")
        expires_in = check_expires_in(self.expires_in, "invalid job: ")
        if expires_in is not None:
            extra["expires_at"] = expires_at_from(expires_in)
        if not extra:
            return self.custom
        if self.custom is not None and not isinstance(self.custom, Mapping):
            raise ValidationError(
                f"invalid job: custom must be a mapping, got {self.custom!r}", field="custom"
            )
        return {**(self.custom or {}), **extra}

    def payload(self) -> JobPayload:
        """The validated wire payload (raises ValidationError naming the bad field)."""
        return JobPayload.create(
            jid=self.jid,
            jobtype=self.jobtype,
            queue=self.queue,
            args=self.args,
            priority=self.priority,
            retry=self.retry,
            at=self.at,
            reserve_for=self.reserve_for,
            custom=self._custom(),
            backtrace=self.backtrace,
        )

    def to_json(self) -> str:
        """The validated job as the compact JSON PUSH would send."""
        return self.payload().to_json()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.jobtype} jid={self.jid} queue={self.queue} "
            f"args={self.args!r}>"
        )


class Job(JobBuilder):
    """A job to push through a :class:`~kaffi.client.Client` (``client.job(...)``)."""

    __slots__ = ("client",)

    def __init__(self, jobtype: str, *args: Any, client: JobPusher | None = None, **fields: Any):
        super().__init__(jobtype, *args, **fields)
        self.client = client

    def push(self) -> str:
        """PUSH the job; returns its jid."""
        if self.client is None:
            raise ConfigurationError(
                "this Job is not bound to a client: build it with client.job(...) or "
                "pass it to client.push(job)"
            )
        return self.client.push(self)


class AsyncJob(JobBuilder):
    """A job to push through an :class:`~kaffi.client.AsyncClient` (``await job.push()``)."""

    __slots__ = ("client",)

    def __init__(
        self, jobtype: str, *args: Any, client: AsyncJobPusher | None = None, **fields: Any
    ):
        super().__init__(jobtype, *args, **fields)
        self.client = client

    async def push(self) -> str:
        """PUSH the job; returns its jid."""
        if self.client is None:
            raise ConfigurationError(
                "this AsyncJob is not bound to a client: build it with client.job(...) or "
                "pass it to await client.push(job)"
            )
        return await self.client.push(self)


def as_payload(
    job: JobBuilder | JobPayload | EncodedJob | Mapping[str, Any],
) -> JobPayload | EncodedJob:
    """A validated payload from a builder, a payload or a dict (checked like the server
    would, so a bad field raises ValidationError before anything is sent). A JobPayload
    or an EncodedJob was checked when it was built and is returned as it is."""
    # Exact-type checks first for the two common cases (every .delay(), and
    # client.push(dict)): they cost far less than isinstance against pydantic's and
    # collections.abc's classes.
    if type(job) is EncodedJob:
        return job
    if type(job) is dict or isinstance(job, Mapping):
        for key in job:
            if not isinstance(key, str):
                raise ValidationError(f"invalid job: field names must be strings, got {key!r}")
        return JobPayload.create(**job)
    if isinstance(job, JobPayload | EncodedJob):
        return job
    if isinstance(job, JobBuilder):
        return job.payload()
    raise _not_a_job(job)


def _not_a_job(job: object) -> ValidationError:
    """The error for something :func:`as_payload` cannot push."""
    hint = ""
    name = getattr(job, "name", None)
    if callable(getattr(job, "job", None)) and isinstance(name, str):
        # A task itself (success=report instead of success=report.job(...)): the likeliest
        # slip with batch callbacks. Duck-typed, as this module must not import kaffi.app.
        hint = f" (a task: build its job with {name}.job(...))"
    return ValidationError(
        f"expected a Job, a JobPayload or a dict to push, got {type(job).__name__}{hint}",
        field="job",
    )
