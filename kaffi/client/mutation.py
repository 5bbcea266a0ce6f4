"""MUTATE, the Faktory way to act on the retry, scheduled and dead sets.

``client.dead.of_type("send_email").discard()``,
``client.retries.with_jids("1234").requeue()``,
``client.retries.matching("*uid:12345*").kill()``, ``client.scheduled.clear()``.

A :class:`Mutation` is immutable: each filter method returns a new one, so
``dead = client.dead`` can be narrowed in several directions. The filters are the
server's: ``with_jids`` wins over the others, ``matching`` takes a Redis SCAN glob (not a
regular expression, despite the wire field's name ``regexp``), and ``clear()`` ignores
filters and empties the whole set. The encoding lives in
:func:`kaffi.protocol.commands.encode_mutate`; this module only gathers the filters.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from kaffi.errors import ValidationError
from kaffi.protocol.commands import MUTATE_TARGETS, encode_mutate

__all__ = ["Mutation", "AsyncMutation", "MutationRunner", "AsyncMutationRunner"]


class MutationRunner(Protocol):
    """What a :class:`Mutation` sends its line through (a :class:`~kaffi.client.Client`;
    a protocol, so this module needs no import of the clients)."""

    def _mutate(self, line: bytes, /) -> None:
        """Send the MUTATE line and check the server's +OK."""


class AsyncMutationRunner(Protocol):
    """What an :class:`AsyncMutation` sends its line through (an
    :class:`~kaffi.client.AsyncClient`)."""

    async def _mutate(self, line: bytes, /) -> None:
        """Send the MUTATE line and check the server's +OK."""


_M = TypeVar("_M", bound="_MutationFilter")


class _MutationFilter:
    __slots__ = ("jids", "jobtype", "pattern", "target")

    def __init__(
        self,
        target: str,
        *,
        jobtype: str | None = None,
        jids: tuple[str, ...] = (),
        pattern: str | None = None,
    ) -> None:
        if target not in MUTATE_TARGETS:
            raise ValidationError(
                f"mutation target must be one of {MUTATE_TARGETS}, got {target!r}", field="target"
            )
        self.target = target
        self.jobtype = jobtype
        self.jids = jids
        self.pattern = pattern

    def _copy(self: _M, **changes: object) -> _M:
        new = object.__new__(type(self))
        for cls in type(self).__mro__:
            for name in getattr(cls, "__slots__", ()):
                setattr(new, name, changes.get(name, getattr(self, name)))
        return new

    def of_type(self: _M, jobtype: str) -> _M:
        """Only jobs of this jobtype."""
        if not isinstance(jobtype, str) or not jobtype:
            raise ValidationError(f"of_type needs a jobtype, got {jobtype!r}", field="jobtype")
        return self._copy(jobtype=jobtype)

    def with_jids(self: _M, *jids: str) -> _M:
        """Only these jobs (the server then ignores the other filters)."""
        if not jids or not all(isinstance(j, str) and j for j in jids):
            raise ValidationError(f"with_jids needs one or more jids, got {jids!r}", field="jids")
        return self._copy(jids=self.jids + tuple(jids))

    def matching(self: _M, pattern: str) -> _M:
        """Only jobs whose JSON matches this Redis SCAN glob, e.g. ``"*uid:12345*"``."""
        if not isinstance(pattern, str) or not pattern:
            raise ValidationError(
                f"matching needs a glob pattern, got {pattern!r}", field="pattern"
            )
        return self._copy(pattern=pattern)

    def command(self, cmd: str) -> bytes:
        """The MUTATE line for ``cmd`` (clear, kill, discard or requeue) with these filters."""
        return encode_mutate(
            cmd, self.target, jobtype=self.jobtype, jids=self.jids or None, regexp=self.pattern
        )

    def __repr__(self) -> str:
        parts = [self.target]
        if self.jobtype is not None:
            parts.append(f"of_type={self.jobtype!r}")
        if self.jids:
            parts.append(f"with_jids={list(self.jids)!r}")
        if self.pattern is not None:
            parts.append(f"matching={self.pattern!r}")
        return f"<{type(self).__name__} {' '.join(parts)}>"


class Mutation(_MutationFilter):
    """A filtered view of one set (``client.retries``, ``.scheduled``, ``.dead``)."""

    __slots__ = ("client",)

    def __init__(self, client: MutationRunner, target: str) -> None:
        super().__init__(target)
        self.client = client

    def clear(self) -> None:
        """Empty the whole set (filters do not apply to clear)."""
        self.client._mutate(self.command("clear"))

    def kill(self) -> None:
        """Move the matching jobs to the dead set."""
        self.client._mutate(self.command("kill"))

    def discard(self) -> None:
        """Delete the matching jobs."""
        self.client._mutate(self.command("discard"))

    def requeue(self) -> None:
        """Push the matching jobs back onto their queues now."""
        self.client._mutate(self.command("requeue"))


class AsyncMutation(_MutationFilter):
    """:class:`Mutation` for :class:`~kaffi.client.AsyncClient`: the actions are coroutines."""

    __slots__ = ("client",)

    def __init__(self, client: AsyncMutationRunner, target: str) -> None:
        super().__init__(target)
        self.client = client

    async def clear(self) -> None:
        """Empty the whole set (filters do not apply to clear)."""
        await self.client._mutate(self.command("clear"))

    async def kill(self) -> None:
        """Move the matching jobs to the dead set."""
        await self.client._mutate(self.command("kill"))

    async def discard(self) -> None:
        """Delete the matching jobs."""
        await self.client._mutate(self.command("discard"))

    async def requeue(self) -> None:
        """Push the matching jobs back onto their queues now."""
        await self.client._mutate(self.command("requeue"))
