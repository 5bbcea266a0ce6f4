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
import enum
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from pydantic_core import PydanticSerializationError, to_json

from kaffi._bases import forwarded
from kaffi.app import push
from kaffi.app.middleware import is_async_callable
from kaffi.app.push import BulkOutcome
from kaffi.app.signature import TaskSignature
from kaffi.errors import ConfigurationError, ValidationError
from kaffi.protocol.enterprise import check_expires_in, expires_at_from
from kaffi.protocol.models import (
    DEFAULT_RESERVE_FOR,
    DEFAULT_RETRY,
    EncodedJob,
    JobPayload,
    format_rfc3339,
    new_jid,
)
from kaffi.protocol.options import ENTERPRISE_OPTIONS, EnterpriseOptionArgs, JobOptionFields

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from kaffi.app.app import App
    from kaffi.client import Job

__all__ = ["KEEP", "OnCommitHook", "Task", "TaskOptions", "set_on_commit_hook"]

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


class _Keep(enum.Enum):
    KEEP = 0


#: ``.options()``'s default for the options where None has a meaning of its own
#: (``unique_for=None`` turns uniqueness off): keep the task's value.
KEEP = _Keep.KEEP


class TaskOptions(JobOptionFields):
    """A task's validated job options and the payload template built from them."""

    __slots__ = ("countdown", "json_head", "template")

    at: datetime | None
    #: Checked at declaration; an absolute expires_at is written at each push.
    expires_in: timedelta | None

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
        **enterprise: Unpack[EnterpriseOptionArgs],
    ) -> None:
        self._set_enterprise(enterprise)
        if at is not None and countdown is not None:
            raise ValidationError(
                f"task {jobtype!r}: give at= or countdown=, not both", field="countdown"
            )
        if self.expires_at is not None and self.expires_in is not None:
            raise ValidationError(
                f"task {jobtype!r}: give expires_at= or expires_in=, not both", field="expires_in"
            )
        self.countdown = _check_countdown(jobtype, countdown)
        owner = f"task {jobtype!r}: "
        # Faktory Enterprise's custom keys (kaffi.protocol.enterprise cites the sources);
        # expires_in becomes an absolute expires_at at each push, as countdown does.
        extra = self.enterprise_keys(owner)
        self.expires_in = check_expires_in(self.expires_in, owner)
        user_custom = custom
        if extra:
            if custom is not None and not isinstance(custom, Mapping):
                raise ValidationError(
                    f"{owner}bad option custom: it must be a mapping, got {custom!r}",
                    field="custom",
                )
            custom = {**(custom or {}), **extra}
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
        if extra:
            # What the user gave as custom, without the keys the options wrote (so that
            # replace() can switch an option off).
            self.custom = (
                {k: v for k, v in (self.custom or {}).items() if k not in extra}
                if user_custom is not None
                else None
            )
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
            "unique_for": self.unique_for,
            "unique_until": self.unique_until,
            "expires_at": self.expires_at,
            "expires_in": self.expires_in,
            "track": self.track,
        }
        given = {
            k: v
            for k, v in changes.items()
            if v is not KEEP and (v is not None or k in ENTERPRISE_OPTIONS)
        }
        # A new schedule replaces the old one, whichever form either was in; so does a
        # new expiry.
        if "at" in given:
            current["countdown"] = None
        if "countdown" in given:
            current["at"] = None
        if given.get("expires_at") is not None:
            current["expires_in"] = None
        if given.get("expires_in") is not None:
            current["expires_at"] = None
        # Switching uniqueness off takes its release rule with it.
        if "unique_for" in given and given["unique_for"] is None:
            given.setdefault("unique_until", None)
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

    queue = forwarded[str]("_options.queue", "The queue jobs of this task go to.")
    retry = forwarded[int](
        "_options.retry",
        "How many times Faktory retries a failed job (-1: straight to the dead set).",
    )
    reserve_for = forwarded[int | None](
        "_options.reserve_for", "Seconds a worker may hold a job before Faktory hands it out again."
    )
    backtrace = forwarded[int | None](
        "_options.backtrace",
        "Lines of a failure's backtrace the job asks to keep (None: the worker's default).",
    )

    @property
    def custom(self) -> dict[str, Any] | None:
        # A copy: the options' dict is shared by every payload this task builds.
        """A copy of the ``custom`` mapping every job of this task carries (or None)."""
        custom = self._options.custom
        return dict(custom) if custom is not None else None

    at = forwarded[datetime | None](
        "_options.at",
        "The fixed time jobs are scheduled for (set with ``.options(at=...)``), or None.",
    )
    countdown = forwarded[timedelta | None](
        "_options.countdown",
        "The delay counted from each ``.delay()`` (``.options(countdown=...)``), or None.",
    )

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
        unique_for: float | timedelta | Literal[_Keep.KEEP] | None = KEEP,
        unique_until: str | Literal[_Keep.KEEP] | None = KEEP,
        expires_at: datetime | str | Literal[_Keep.KEEP] | None = KEEP,
        expires_in: float | timedelta | Literal[_Keep.KEEP] | None = KEEP,
        track: bool | Literal[_Keep.KEEP] | None = KEEP,
    ) -> Task[P, R]:
        """A copy of this task with other job options (checked now, naming a bad one);
        options left at None keep the task's value. ``countdown`` is seconds or a
        timedelta counted from each ``.delay()``; ``at`` a datetime or RFC 3339 string.

        The Faktory Enterprise options (see ``docs/enterprise.md``) keep the task's value
        when left out and are switched off by None: ``unique_for=None`` sends a job that
        ignores unique locks. ``unique_for`` is seconds (or a timedelta) a duplicate is
        refused for, ``unique_until`` ``"success"`` or ``"start"``, ``expires_at`` a
        datetime or ``expires_in`` seconds/a timedelta counted from each push, ``track``
        True to make the job's progress readable with ``app.progress(jid)``."""
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
            unique_for=unique_for,
            unique_until=unique_until,
            expires_at=expires_at,
            expires_in=expires_in,
            track=track,
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
        expires_in = self._options.expires_in
        if expires_in is not None:
            custom = payload.get("custom") or {}
            payload["custom"] = {**custom, "expires_at": expires_at_from(expires_in)}
        return payload

    def encoded_job(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> EncodedJob:
        """The job a call would push, validated and encoded: the bytes are those of
        ``EncodedJob.from_checked(self.payload(args, kwargs))``, built without the dict."""
        head = self._json_head
        data = self._encode_json(args, kwargs) if head is not None else None
        if head is None or data is None or self._options.expires_in is not None:
            # (An expires_in changes custom at every push: the template's JSON cannot hold it.)
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

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        """Push a job calling this task with these arguments; returns its jid, or None
        when a push middleware dropped the job (did not call ``next``: nothing was sent).

        The arguments are validated against the type hints first: a wrong type, a missing
        or extra argument, or a value that cannot become JSON raises
        :class:`~kaffi.errors.ValidationError` and nothing is sent.
        """
        return push.deliver_call(self, args, kwargs)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> str | None:
        """:meth:`delay` for asyncio code (uses ``app.async_client``); None, too, when a
        push middleware dropped the job."""
        return await push.deliver_call_async(self, args, kwargs)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Push this call once the current database transaction commits, and nothing if
        it rolls back; returns the jid the job will have (the push middleware run at
        the commit, so one may still drop it then).

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
    ) -> str | None:
        """Celery's spelling: ``task.apply_async((1, 2), {"x": 3}, queue="low", countdown=5)``.
        ``eta=`` is accepted as a name for ``at=``. Returns the jid, or None when a push
        middleware dropped the job."""
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

    def delay_many(self, items: Iterable[Sequence[Any] | Mapping[str, Any]]) -> BulkOutcome:
        """Push one job per item (a tuple of arguments, or a dict of keyword arguments)
        with PUSHB, in chunks of 1000; returns the jobs the server rejected, as a
        :class:`~kaffi.app.push.BulkOutcome`: a list of them whose ``dropped`` counts the
        jobs a push middleware dropped (those were never sent, and are not in the list).

        Items are validated a chunk at a time, each chunk before any of it is sent, and
        the next chunk is prepared while the server stores the last one. A bad item
        raises ValidationError naming its index; nothing of its chunk or after it is
        sent, and the message says which items were already pushed ("nothing was sent"
        when it is among the first 1000). Push middleware run for each job, around
        collecting it: a chunk's PUSHB happens after the chains of its jobs returned.
        """
        outcome = BulkOutcome()
        payloads = push.collect(self.app, self._payloads(items), self, outcome)
        outcome.extend(push.deliver_many(self.app, payloads))
        return outcome

    async def delay_many_async(
        self, items: Iterable[Sequence[Any] | Mapping[str, Any]]
    ) -> BulkOutcome:
        """:meth:`delay_many` for asyncio code (with async push middleware installed,
        every item is validated and run through them before the first chunk is sent)."""
        outcome = BulkOutcome()
        if self.app.push_middleware:
            payloads: Iterable[dict[str, Any]] = await push.collect_async(
                self.app, self._payloads(items), self, outcome
            )
        else:
            payloads = self._payloads(items)
        outcome.extend(await push.deliver_many_async(self.app, payloads))
        return outcome

    def job(self, *args: P.args, **kwargs: P.kwargs) -> Job:
        """The client's Job builder for this call, with the task's options applied (for
        setting fields one by one before ``.push()``). It pushes through ``app.client``
        directly: push middleware and testing modes do not see it."""
        payload = self.payload(args, kwargs)
        job = self.app.client.job(self.name, *payload["args"])
        for field in ("jid", "queue", "retry", "reserve_for", "at", "custom", "backtrace"):
            if field in payload:
                setattr(job, field, payload[field])
        # custom already holds the Enterprise keys; a builder's expires_in would count
        # from its push, so it is kept as that rather than the expires_at written now.
        if self._options.expires_in is not None:
            job.expires_in = self._options.expires_in
            job.custom = {k: v for k, v in payload["custom"].items() if k != "expires_at"}
        return job

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue!r}>"


_OPTION_NAMES = frozenset(
    {"queue", "at", "countdown", "retry", "reserve_for", "custom", "jid", "backtrace"}
    | set(ENTERPRISE_OPTIONS)
)
