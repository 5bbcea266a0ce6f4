"""``Task``: what ``@app.task`` returns, and the job options a task carries.

Calling a task runs the function here and now; ``.delay()`` (or ``.delay_async()`` from
asyncio) pushes a job and returns its jid; ``.options(...)`` returns a configured copy;
``.apply_async(...)`` is the Celery spelling; ``.delay_many(...)`` pushes with PUSHB;
``.job(...)`` returns the client's Job builder; ``.delay_on_commit(...)`` pushes once the
current database transaction commits, through the *on-commit hook* an integration installs
with :func:`set_on_commit_hook` (``kaffi.contrib.django`` installs Django's
``transaction.on_commit``). This module imports no database framework.

Options (queue, retry, reserve_for, at, countdown, custom, jid, backtrace) are checked
once, when the task is declared or ``.options()`` is called, against the server's own
rules, and kept as a ready payload template; each ``.delay()`` then only binds and
validates its arguments (see :mod:`kaffi.app.signature`), fills in a jid and sends.
The template is also kept as JSON, so a ``.delay()`` that goes straight to the client
(no push middleware, no testing mode) joins bytes instead of building and encoding a
dict: :meth:`Task.encoded_job` gives the same bytes as encoding :meth:`Task.payload`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pydantic_core import PydanticSerializationError, to_json

from kaffi.app import push
from kaffi.app.middleware import is_async_callable
from kaffi.app.signature import TaskSignature
from kaffi.errors import ConfigurationError, ValidationError
from kaffi.protocol.models import (
    DEFAULT_RESERVE_FOR,
    DEFAULT_RETRY,
    EncodedJob,
    JobPayload,
    RejectedJob,
    format_rfc3339,
    new_jid,
)

if TYPE_CHECKING:
    from kaffi.app.app import App
    from kaffi.client import Job

__all__ = ["OnCommitHook", "Task", "TaskOptions", "set_on_commit_hook"]

P = ParamSpec("P")
R = TypeVar("R", covariant=True)

_PLACEHOLDER_JID = "0" * 24

#: ``hook(callback)``: run ``callback`` once the current transaction commits, never if it
#: rolls back (and at once when no transaction is open, as Django's ``on_commit`` does).
OnCommitHook = Callable[[Callable[[], object]], object]
_on_commit_hook: OnCommitHook | None = None


def set_on_commit_hook(hook: OnCommitHook | None) -> OnCommitHook | None:
    """Install what :meth:`Task.delay_on_commit` uses to wait for a commit; returns the
    hook it replaces. ``kaffi.contrib.django`` installs ``django.db.transaction.on_commit``
    when Django loads it; None removes the hook."""
    global _on_commit_hook
    if hook is not None and not callable(hook):
        raise ConfigurationError(f"the on-commit hook must be callable, got {hook!r}")
    previous, _on_commit_hook = _on_commit_hook, hook
    return previous


class TaskOptions:
    """A task's validated job options and the payload template built from them."""

    __slots__ = (
        "at",
        "backtrace",
        "countdown",
        "custom",
        "jid",
        "json_head",
        "queue",
        "reserve_for",
        "retry",
        "template",
    )

    def __init__(
        self,
        jobtype: str,
        *,
        queue: str = "default",
        retry: int = DEFAULT_RETRY,
        reserve_for: int | None = DEFAULT_RESERVE_FOR,
        backtrace: int | None = None,
        custom: Mapping[str, Any] | None = None,
        at: datetime | str | None = None,
        countdown: float | timedelta | None = None,
        jid: str | None = None,
    ) -> None:
        if at is not None and countdown is not None:
            raise ValidationError(
                f"task {jobtype!r}: give at= or countdown=, not both", field="countdown"
            )
        self.countdown = _check_countdown(jobtype, countdown)
        try:
            # The payload model applies the server's own rules and names the bad field.
            model = JobPayload.create(
                jid=jid if jid is not None else _PLACEHOLDER_JID,
                jobtype=jobtype,
                queue=queue,
                retry=retry,
                reserve_for=reserve_for,
                backtrace=backtrace,
                custom=dict(custom) if custom is not None else None,
                at=at,
            )
        except ValidationError as exc:
            raise ValidationError(
                f"task {jobtype!r}: bad option {_strip_prefix(str(exc))}", field=exc.field
            ) from None
        except (TypeError, ValueError) as exc:
            raise ValidationError(
                f"task {jobtype!r}: bad option custom: it must be a mapping: {exc}",
                field="custom",
            ) from None
        try:
            # Only custom holds values of any type, so only it can fail to become JSON.
            template = model.to_wire()
        except (ValidationError, PydanticSerializationError) as exc:
            reason = str(exc).rpartition("cannot be sent as JSON: ")[2]
            raise ValidationError(
                f"task {jobtype!r}: bad option custom: it must be a JSON object: {reason}",
                field="custom",
            ) from None
        self.queue = model.queue
        self.retry = model.retry
        self.reserve_for = model.reserve_for
        self.backtrace = model.backtrace
        self.custom = template.get("custom")
        self.at = model.at
        self.jid = jid
        template.pop("args", None)
        if jid is None:
            template.pop("jid")
        self.template = template
        #: The template as JSON without its closing brace (see the module docstring).
        self.json_head = _json_head(template)

    def replace(self, jobtype: str, **changes: Any) -> TaskOptions:
        """A copy with ``changes`` applied (None means: keep the current value)."""
        current: dict[str, Any] = {
            "queue": self.queue,
            "retry": self.retry,
            "reserve_for": self.reserve_for,
            "backtrace": self.backtrace,
            "custom": self.custom,
            "at": self.at,
            "countdown": self.countdown,
            "jid": self.jid,
        }
        given = {k: v for k, v in changes.items() if v is not None}
        # A new schedule replaces the old one, whichever form either was in.
        if "at" in given:
            current["countdown"] = None
        if "countdown" in given:
            current["at"] = None
        current.update(given)
        return TaskOptions(jobtype, **current)


def _json_head(template: dict[str, Any]) -> bytes | None:
    """``template`` as compact JSON minus the closing ``}``, as the job encoder writes it;
    None when a job of this template must take the dict path (a NaN or Infinity token, or
    text that only looks like one, which the dict path tells apart)."""
    try:
        data = to_json(template)
    except (PydanticSerializationError, ValueError, TypeError):
        return None
    if len(data) < 3 or data.find(b"NaN") >= 0 or data.find(b"Infinity") >= 0:
        return None
    return data[:-1]


def _strip_prefix(message: str) -> str:
    return message[len("invalid job: ") :] if message.startswith("invalid job: ") else message


def _check_countdown(jobtype: str, countdown: float | timedelta | None) -> timedelta | None:
    if countdown is None:
        return None
    if isinstance(countdown, timedelta):
        delay = countdown
    elif isinstance(countdown, (int, float)) and not isinstance(countdown, bool):
        if countdown != countdown or countdown in (float("inf"), float("-inf")):
            delay = timedelta(-1)
        else:
            delay = timedelta(seconds=countdown)
    else:
        raise ValidationError(
            f"task {jobtype!r}: bad option countdown: expected seconds or a timedelta,"
            f" got {countdown!r}",
            field="countdown",
        )
    if delay < timedelta(0):
        raise ValidationError(
            f"task {jobtype!r}: bad option countdown: must be a finite delay of 0 or more,"
            f" got {countdown!r}",
            field="countdown",
        )
    return delay


class Task(Generic[P, R]):
    """A function registered as a Faktory jobtype.

    ``name`` is the jobtype, ``fn`` the function, ``is_async`` whether it is ``async def``.
    The job options (``queue``, ``retry``, ``reserve_for``, ``backtrace``, ``custom``,
    ``at``, ``countdown``) are the defaults every ``.delay()`` uses.
    """

    app: App
    fn: Callable[P, R]
    name: str
    signature: TaskSignature
    is_async: bool
    # Copied from the function by functools.update_wrapper.
    __name__: str
    __qualname__: str

    def __init__(
        self,
        app: App,
        fn: Callable[P, R],
        name: str,
        options: TaskOptions,
        signature: TaskSignature | None = None,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.app = app
        self.fn = fn
        self.name = name
        self.signature = signature if signature is not None else TaskSignature(fn, name)
        self.is_async = is_async_callable(fn)
        self._options = options
        self._template = options.template
        self._countdown = options.countdown
        self._json_head = options.json_head
        self._encode = self.signature.encode
        self._encode_json = self.signature.encode_json

    # -- options ---------------------------------------------------------------------------

    @property
    def queue(self) -> str:
        """The queue jobs of this task go to."""
        return self._options.queue

    @property
    def retry(self) -> int:
        """How many times Faktory retries a failed job (-1: straight to the dead set)."""
        return self._options.retry

    @property
    def reserve_for(self) -> int | None:
        """Seconds a worker may hold a job before Faktory hands it out again."""
        return self._options.reserve_for

    @property
    def backtrace(self) -> int | None:
        """Lines of a failure's backtrace the job asks to keep (None: the worker's default)."""
        return self._options.backtrace

    @property
    def custom(self) -> dict[str, Any] | None:
        # A copy: the options' dict is shared by every payload this task builds.
        """A copy of the ``custom`` mapping every job of this task carries (or None)."""
        custom = self._options.custom
        return dict(custom) if custom is not None else None

    @property
    def at(self) -> datetime | None:
        """The fixed time jobs are scheduled for (set with ``.options(at=...)``), or None."""
        return self._options.at

    @property
    def countdown(self) -> timedelta | None:
        """The delay counted from each ``.delay()`` (``.options(countdown=...)``), or None."""
        return self._options.countdown

    def options(
        self,
        *,
        queue: str | None = None,
        at: datetime | str | None = None,
        countdown: float | timedelta | None = None,
        retry: int | None = None,
        reserve_for: int | None = None,
        custom: Mapping[str, Any] | None = None,
        jid: str | None = None,
        backtrace: int | None = None,
    ) -> Task[P, R]:
        """A copy of this task with other job options (checked now, naming a bad one);
        options left at None keep the task's value. ``countdown`` is seconds or a
        timedelta counted from each ``.delay()``; ``at`` a datetime or RFC 3339 string."""
        options = self._options.replace(
            self.name,
            queue=queue,
            at=at,
            countdown=countdown,
            retry=retry,
            reserve_for=reserve_for,
            custom=custom,
            jid=jid,
            backtrace=backtrace,
        )
        configured = copy.copy(self)
        configured._options = options
        configured._template = options.template
        configured._countdown = options.countdown
        configured._json_head = options.json_head
        return configured

    # -- running here ----------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function in this process, now (no job, no validation)."""
        return self.fn(*args, **kwargs)

    def decode_args(self, args: Sequence[Any]) -> tuple[list[Any], dict[str, Any]]:
        """A job's args converted back to the annotated types, for the call (worker side)."""
        return self.signature.decode(args)

    # -- pushing ---------------------------------------------------------------------------

    def payload(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The JSON-compatible job a call would push (arguments validated)."""
        payload = self._template.copy()
        if "jid" not in payload:
            payload["jid"] = new_jid()
        payload["args"] = self._encode(args, kwargs)
        if self._countdown is not None:
            payload["at"] = format_rfc3339(datetime.now(timezone.utc) + self._countdown)
        return payload

    def encoded_job(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> EncodedJob:
        """The job a call would push, validated and encoded: the bytes are those of
        ``EncodedJob.from_checked(self.payload(args, kwargs))``, built without the dict."""
        head = self._json_head
        data = self._encode_json(args, kwargs) if head is not None else None
        if head is None or data is None:
            # Anything out of the ordinary: the dict path, which reports what is wrong.
            return EncodedJob.from_checked(self.payload(args, kwargs))
        # The dict path's key order: the template's keys, then jid (unless an option fixed
        # it), args and a countdown's at.
        if self._countdown is None:
            tail = b"}"
        else:
            at = format_rfc3339(datetime.now(timezone.utc) + self._countdown)
            tail = b',"at":"%b"}' % at.encode()
        jid = self._options.jid
        if jid is None:
            jid = new_jid()
            return EncodedJob(jid, b'%b,"jid":"%b","args":%b%b' % (head, jid.encode(), data, tail))
        return EncodedJob(jid, b'%b,"args":%b%b' % (head, data, tail))

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Push a job calling this task with these arguments; returns its jid.

        The arguments are validated against the type hints first: a wrong type, a missing
        or extra argument, or a value that cannot become JSON raises
        :class:`~kaffi.errors.ValidationError` and nothing is sent.
        """
        return push.deliver_call(self, args, kwargs)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """:meth:`delay` for asyncio code (uses ``app.async_client``)."""
        return await push.deliver_call_async(self, args, kwargs)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Push this call once the current database transaction commits, and nothing if
        it rolls back; returns the jid the job will have.

        The arguments are validated now (a bad one raises here, inside the transaction)
        and the job is built now, so a ``countdown`` counts from this call. A worker
        cannot then fetch the job before the rows it reads are committed. The transaction
        is the one the installed on-commit hook knows (see :func:`set_on_commit_hook`):
        with ``kaffi.contrib.django`` in ``INSTALLED_APPS``, Django's default database.
        """
        hook = _on_commit_hook
        if hook is None:
            raise ConfigurationError(
                f"task {self.name!r}: delay_on_commit() needs an on-commit hook: add"
                ' "kaffi.contrib.django" to INSTALLED_APPS, or install one with'
                " kaffi.app.task.set_on_commit_hook()"
            )
        payload = self.payload(args, kwargs)
        hook(functools.partial(push.deliver, self.app, payload, self))
        jid: str = payload["jid"]
        return jid

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Celery's spelling: ``task.apply_async((1, 2), {"x": 3}, queue="low", countdown=5)``.
        ``eta=`` is accepted as a name for ``at=``."""
        if "eta" in options:
            if "at" in options:
                raise ValidationError(
                    f"task {self.name!r}: give eta= or at=, not both", field="eta"
                )
            options["at"] = options.pop("eta")
        unknown = sorted(set(options) - _OPTION_NAMES)
        if unknown:
            raise ValidationError(
                f"task {self.name!r}: unknown option {unknown[0]!r}; options are"
                f" {', '.join(sorted(_OPTION_NAMES | {'eta'}))}",
                field=unknown[0],
            )
        task = self.options(**options) if options else self
        return push.deliver_call(task, tuple(args or ()), kwargs or {})

    def _payloads(
        self, items: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> Iterator[dict[str, Any]]:
        """Each item's payload, validated as it is taken (see :meth:`delay_many`)."""
        for index, item in enumerate(items):
            try:
                if isinstance(item, Mapping):
                    payload = self.payload((), item)
                elif isinstance(item, (str, bytes)) or not isinstance(item, Sequence):
                    raise ValidationError(
                        f"task {self.name!r}: expected a tuple of arguments or a dict of"
                        f" keyword arguments, got {item!r}",
                    )
                else:
                    payload = self.payload(item, {})
            except ValidationError as exc:
                raise ValidationError(f"delay_many item {index}: {exc}", field=exc.field) from None
            yield payload

    def delay_many(self, items: Iterable[Sequence[Any] | Mapping[str, Any]]) -> list[RejectedJob]:
        """Push one job per item (a tuple of arguments, or a dict of keyword arguments)
        with PUSHB, in chunks of 1000; returns the jobs the server rejected.

        Items are validated a chunk at a time, each chunk before any of it is sent, and
        the next chunk is prepared while the server stores the last one. A bad item
        raises ValidationError naming its index; nothing of its chunk or after it is
        sent, and the message says which items were already pushed ("nothing was sent"
        when it is among the first 1000). Push middleware run for each job, around
        collecting it: a chunk's PUSHB happens after the chains of its jobs returned.
        """
        return push.deliver_many(self.app, push.collect(self.app, self._payloads(items), self))

    async def delay_many_async(
        self, items: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> list[RejectedJob]:
        """:meth:`delay_many` for asyncio code (with async push middleware installed,
        every item is validated and run through them before the first chunk is sent)."""
        if self.app.push_middleware:
            payloads: Iterable[dict[str, Any]] = await push.collect_async(
                self.app, self._payloads(items), self
            )
        else:
            payloads = self._payloads(items)
        return await push.deliver_many_async(self.app, payloads)

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The client's Job builder for this call, with the task's options applied (for
        setting fields one by one before ``.push()``). It pushes through ``app.client``
        directly: push middleware and testing modes do not see it."""
        payload = self.payload(args, kwargs)
        job = self.app.client.job(self.name, *payload["args"])
        for field in ("jid", "queue", "retry", "reserve_for", "at", "custom", "backtrace"):
            if field in payload:
                setattr(job, field, payload[field])
        return job

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue!r}>"


_OPTION_NAMES = frozenset(
    {"queue", "at", "countdown", "retry", "reserve_for", "custom", "jid", "backtrace"}
)
