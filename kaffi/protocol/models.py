"""The JSON documents of the Faktory Work Protocol as pydantic v2 models.

:class:`JobPayload` is the job as it travels on the wire. Building one *validates it with
the server's own rules* (jid length, queue-name pattern, ``reserve_for`` range, RFC 3339
``at``), so a bad job is refused locally, with a message naming the field, before any byte
is sent. Payloads that come *from* a server (FETCH) are parsed with :meth:`JobPayload.from_wire`,
which is lenient: another client may have pushed a job our stricter rules would refuse
(a ``reserve_for`` of 10, say) and a worker must still run it.

The RFC 3339 parser and formatter it uses for ``at`` live in :mod:`kaffi.protocol.rfc3339`
and are re-exported here. This module does no I/O.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from typing import Any, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_serializer,
    field_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import CoreSchema, PydanticSerializationError, SchemaValidator
from pydantic_core import to_json as _to_json

from kaffi.errors import RemoteProtocolError, ValidationError
from kaffi.protocol.rfc3339 import (
    RFC3339Error,
    format_rfc3339,
    parse_optional_rfc3339,
    parse_rfc3339,
)

__all__ = [
    "QUEUE_NAME_PATTERN",
    "MAX_RESERVE_FOR",
    "MIN_RESERVE_FOR",
    "DEFAULT_RESERVE_FOR",
    "DEFAULT_RETRY",
    "FAIL_ERRTYPE_MAX",
    "FAIL_MESSAGE_MAX",
    "MAX_BACKTRACE",
    "new_jid",
    "validate_queue_name",
    "RFC3339Error",
    "parse_rfc3339",
    "format_rfc3339",
    "Failure",
    "JobPayload",
    "EncodedJob",
    "Hi",
    "Hello",
    "RejectedJob",
    "FaktoryInfo",
    "TaskStats",
    "ServerInfo",
    "Info",
    "dumps",
    "validation_message",
    "has_non_finite",
]

#: Faktory's rule for queue names (``\A[a-zA-Z0-9._-]+\z`` in Go).
QUEUE_NAME_PATTERN = re.compile(r"[a-zA-Z0-9._-]+")
MIN_JID_LENGTH = 8
MIN_RESERVE_FOR = 60
MAX_RESERVE_FOR = 86400
DEFAULT_RESERVE_FOR = 1800
DEFAULT_RETRY = 25
#: What a Faktory server keeps of a FAIL: the errtype and message trimmed of surrounding
#: white space and cut to this many bytes of UTF-8, and this many backtrace lines.
FAIL_ERRTYPE_MAX = 100
FAIL_MESSAGE_MAX = 1000
MAX_BACKTRACE = 50

_LENIENT = {"lenient": True}


def dumps(value: Any) -> str:
    """Compact JSON, as every Faktory client sends it (no spaces after separators).

    NaN and infinities are refused (``ValidationError``): ``NaN`` is not JSON, and a Go
    server would reject the whole line.
    """
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise ValidationError(f"cannot send as JSON: {exc}") from None


def new_jid() -> str:
    """A new random job id: 24 hex characters (96 random bits), like the official clients.

    The bits come from ``os.urandom`` as with :func:`secrets.token_hex`, fetched for
    :data:`_JID_BATCH` jids at a time: one system call, not one per job. Each jid is
    handed out once (``list.pop`` is atomic, so threads never share one) and a forked
    child throws the parent's spares away, so no two processes hand out the same jid.
    """
    try:
        return _spare_jids.pop()
    except IndexError:
        return _more_jids()


#: How many jids one ``os.urandom`` call pays for.
_JID_BATCH = 256
_spare_jids: list[str] = []


def _more_jids() -> str:
    text = os.urandom(12 * _JID_BATCH).hex()
    jids = [text[i : i + 24] for i in range(0, len(text), 24)]
    jid = jids.pop()
    # Threads refilling at once each add their own fresh jids: none is handed out twice.
    _spare_jids.extend(jids)
    return jid


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_spare_jids.clear)


def validate_queue_name(name: object, *, field: str = "queue") -> str:
    """Return ``name`` if Faktory accepts it as a queue name, else raise ValidationError."""
    if not isinstance(name, str) or not QUEUE_NAME_PATTERN.fullmatch(name):
        raise ValidationError(
            f"{field}: invalid queue name {name!r}: queue names must match [a-zA-Z0-9._-]+",
            field=field,
        )
    return name


def validation_message(exc: PydanticValidationError, prefix: str = "") -> str:
    """One readable line per problem, each naming the field: ``queue: ...; jid: ...``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
    return prefix + "; ".join(parts)


class _Model(BaseModel):
    # Non-finite floats are written as NaN/Infinity so to_json can refuse them (see there).
    model_config = ConfigDict(
        extra="ignore", validate_assignment=True, ser_json_inf_nan="constants"
    )


class Failure(_Model):
    """What the server records about the last failure of a job."""

    retry_count: int = 0
    remaining: int | None = None
    failed_at: datetime | None = None
    next_at: datetime | None = None
    message: str | None = None
    errtype: str | None = None
    backtrace: list[str] | None = None


class JobPayload(_Model):
    """A Faktory job.

    ``priority`` is accepted for compatibility with the Node client, but the open-source
    Faktory server does not store it (it drops unknown top-level fields): put data that
    must travel with the job in ``custom``.

    ``retry`` is always sent, even at its default of 25, because Faktory 1.10.0 lets an
    explicit ``retry`` on one PUSH leak into the default of later PUSHes that have none.
    """

    jid: str = Field(default_factory=new_jid)
    jobtype: str
    queue: str = "default"
    args: list[Any] = Field(default_factory=list)
    priority: int | None = None
    retry: int = DEFAULT_RETRY
    at: datetime | None = None
    reserve_for: int | None = DEFAULT_RESERVE_FOR
    backtrace: int | None = None
    custom: dict[str, Any] | None = None
    # Written by the server:
    created_at: datetime | None = None
    enqueued_at: datetime | None = None
    failure: Failure | None = None

    @staticmethod
    def _strict(info: ValidationInfo) -> bool:
        return not (info.context and info.context.get("lenient"))

    @field_validator("jid")
    @classmethod
    def _check_jid(cls, v: str, info: ValidationInfo) -> str:
        # Go's len() counts UTF-8 bytes; count them the same way.
        if cls._strict(info) and len(v.encode("utf-8", "surrogatepass")) < MIN_JID_LENGTH:
            raise ValueError(f"jid must be at least {MIN_JID_LENGTH} characters, got {v!r}")
        return v

    @field_validator("jobtype")
    @classmethod
    def _check_jobtype(cls, v: str) -> str:
        if not v:
            raise ValueError("jobtype must not be empty")
        return v

    @field_validator("queue")
    @classmethod
    def _check_queue(cls, v: str) -> str:
        if not QUEUE_NAME_PATTERN.fullmatch(v):
            raise ValueError(f"invalid queue name {v!r}: queue names must match [a-zA-Z0-9._-]+")
        return v

    @field_validator("retry")
    @classmethod
    def _check_retry(cls, v: int, info: ValidationInfo) -> int:
        if cls._strict(info) and v < -1:
            raise ValueError(f"retry must be -1 (dead at once), 0 (no retry) or more, got {v}")
        return v

    @field_validator("reserve_for")
    @classmethod
    def _check_reserve_for(cls, v: int | None, info: ValidationInfo) -> int | None:
        # Faktory 1.10.0 refuses only more than a day; anything lower is accepted, kept
        # in the payload as sent, and reserved for MIN_RESERVE_FOR (60 s) at least, so
        # code ported from Node with reserveFor: 30 works as it does there.
        if v is not None and cls._strict(info) and v > MAX_RESERVE_FOR:
            raise ValueError(
                f"reserve_for must be at most {MAX_RESERVE_FOR} seconds (one day), got {v}"
            )
        return v

    @field_validator("backtrace")
    @classmethod
    def _check_backtrace(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and cls._strict(info) and v < 0:
            raise ValueError(f"backtrace must be 0 or more lines, got {v}")
        return v

    @field_validator("at", mode="before")
    @classmethod
    def _check_at(cls, v: object) -> object:
        # Faktory treats an empty "at" as no "at" (Go's omitempty): run now.
        v = parse_optional_rfc3339(v)
        if isinstance(v, datetime) and v.tzinfo is None:
            return v.astimezone()
        return v

    @field_serializer("at", "created_at", "enqueued_at")
    def _ser_time(self, v: datetime | None) -> str | None:
        return None if v is None else format_rfc3339(v)

    # -- wire helpers ---------------------------------------------------------------------

    @classmethod
    def create(cls, **fields: Any) -> JobPayload:
        """Build a payload, turning pydantic's error into kaffi's ValidationError."""
        try:
            # The model's validator itself, as __init__ would call it, minus __init__'s
            # own frame: client.push(dict) builds one of these per job.
            job: JobPayload = cls.__pydantic_validator__.validate_python(fields)
            return job
        except PydanticValidationError as exc:
            raise ValidationError(
                validation_message(exc, "invalid job: "), field=_first_field(exc)
            ) from None

    @classmethod
    def from_wire(cls, data: bytes | str | dict[str, Any]) -> JobPayload:
        """Parse a job a server sent; lenient about values another client may have chosen."""
        if cls is not JobPayload:
            job = _validate_lenient(_model_validator(cls), data)
        else:
            try:
                if isinstance(data, dict):
                    job = _WIRE_VALIDATOR.validate_python(data, context=_LENIENT)
                else:
                    job = _WIRE_VALIDATOR.validate_json(data, context=_LENIENT)
            except PydanticValidationError:
                # The wire validator refuses exactly what the model refuses, but words
                # some refusals in pydantic's terms: the model's own validator names the
                # problem as a job built here would hear it.
                job = _validate_lenient(_model_validator(cls), data)
        assert isinstance(job, cls)
        return job

    def __setattr__(self, name: str, value: Any) -> None:
        # Assignments are validated too (validate_assignment); keep kaffi's error type.
        try:
            super().__setattr__(name, value)
        except PydanticValidationError as exc:
            raise ValidationError(
                validation_message(exc, "invalid job: "), field=_first_field(exc) or name
            ) from None

    def to_wire(self) -> dict[str, Any]:
        """The JSON object to PUSH: fields that are None are left out."""
        try:
            return self.model_dump(mode="json", exclude_none=True)
        except PydanticSerializationError as exc:
            raise _unserialisable(self.jid, exc) from None

    def to_json(self) -> str:
        """The compact JSON PUSH sends (fields that are None left out).

        A NaN or infinite float anywhere in the job is refused rather than sent as ``null``
        (pydantic's default), which would silently change the job's arguments.
        """
        return self.to_json_bytes().decode("utf-8")

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json` as the UTF-8 bytes that go on the wire (what the encoders use:
        no round trip through ``str``)."""
        try:
            data = _JOB_SERIALIZER.to_json(self, exclude_none=True)
        except PydanticSerializationError as exc:
            raise _unserialisable(self.jid, exc) from None
        _refuse_non_finite(data, self.jid)
        return data


def _refuse_non_finite(data: bytes, jid: str) -> None:
    # The constants only appear as bare tokens when a float is non-finite; a string
    # that merely contains the letters is told apart by parsing, which is rare. (find()
    # is quicker than ``in`` for bytes, and this runs for every job pushed.)
    if (data.find(b"NaN") >= 0 or data.find(b"Infinity") >= 0) and has_non_finite(data):
        raise ValidationError(
            f"invalid job: job {jid} cannot be sent as JSON: NaN and infinite numbers are not JSON"
        )


#: The model's own pydantic-core serializer: calling it directly skips model_dump_json's
#: keyword handling, which is a measurable share of encoding a small job.
_JOB_SERIALIZER = JobPayload.__pydantic_serializer__

#: The checks the lenient context turns off; from_wire's validator leaves them out.
_STRICT_ONLY_FIELDS = ("jid", "retry", "reserve_for", "backtrace")

#: The other Python checks of JobPayload, each as the pydantic-core constraint that
#: accepts exactly the same strings (``not v`` on a str is ``len(v) == 0``; the queue
#: pattern is QUEUE_NAME_PATTERN, anchored, since pydantic-core searches rather than
#: matches). The wire validator runs them in Rust instead of calling back into Python.
_CORE_CHECKS: dict[str, CoreSchema] = {
    "jobtype": {"type": "str", "min_length": 1},
    "queue": {"type": "str", "pattern": rf"\A{QUEUE_NAME_PATTERN.pattern}\z"},
}


def _without_python_checks(schema: CoreSchema) -> CoreSchema | None:
    """JobPayload's core schema with no call into Python for an ordinary job.

    The validators of the strict-only fields do nothing in the lenient context but still
    cost a call into Python each, and those of ``jobtype`` and ``queue`` have exact
    pydantic-core equivalents (:data:`_CORE_CHECKS`); a worker parses every job it
    fetches, so :meth:`JobPayload.from_wire` uses a validator built from this schema (same
    class, same fields, same acceptance; only ``at``, rare on a fetched job, still calls
    :func:`parse_rfc3339`). None if pydantic laid the schema out otherwise: the model's
    own validator, given the lenient context, then does the same job a little slower.
    """
    if schema["type"] != "model" or schema["schema"]["type"] != "model-fields":
        return None
    fields = dict(schema["schema"]["fields"])
    for name in (*_STRICT_ONLY_FIELDS, *_CORE_CHECKS):
        field = fields[name]
        outer = field["schema"]
        checked = outer["schema"] if outer["type"] == "default" else outer
        if checked["type"] != "function-after":
            return None
        # (pydantic 2.5 also keeps its own notes under "metadata": not a check.)
        inner = {k: v for k, v in checked["schema"].items() if k != "metadata"}
        if name in _CORE_CHECKS and inner != {"type": "str"}:
            return None
        plain = _CORE_CHECKS.get(name, checked["schema"])
        replaced = {**outer, "schema": plain} if outer["type"] == "default" else plain
        fields[name] = {**field, "schema": replaced}
    return {**schema, "schema": {**schema["schema"], "fields": fields}}


def _wire_validator() -> SchemaValidator:
    """The validator :meth:`JobPayload.from_wire` uses (see :func:`_without_python_checks`).

    Worth its lines: measured with timeit, a 130-byte job parses in 2.5 µs instead of
    4.6 µs with the model's own validator (pydantic 2.14, pydantic-core 2.50, Python
    3.11), and a worker parses every job it fetches. Built only from public APIs: the
    model's documented ``__pydantic_core_schema__`` and ``__pydantic_complete__``, and
    pydantic-core's ``SchemaValidator``; any schema layout it does not recognise (another
    pydantic version) falls back to the model's own validator.
    """
    schema = _without_python_checks(JobPayload.__pydantic_core_schema__)
    if schema is None:
        return _model_validator(JobPayload)
    # pydantic-core reuses a finished model's own validator for any schema naming that
    # model's class (its "prebuilt" validators), which would bring the Python checks
    # back; it only does so for a class marked complete, so build this one unmarked.
    complete = JobPayload.__dict__.get("__pydantic_complete__")
    JobPayload.__pydantic_complete__ = False
    try:
        return SchemaValidator(schema)
    finally:
        JobPayload.__pydantic_complete__ = bool(complete)


def _model_validator(cls: type[BaseModel]) -> SchemaValidator:
    # pydantic types it as SchemaValidator or its plugin wrapper (a private class); both
    # have the two methods used here.
    return cast(SchemaValidator, cls.__pydantic_validator__)


def _validate_lenient(validator: SchemaValidator, data: bytes | str | dict[str, Any]) -> Any:
    try:
        if isinstance(data, dict):
            return validator.validate_python(data, context=_LENIENT)
        return validator.validate_json(data, context=_LENIENT)
    except PydanticValidationError as exc:
        raise RemoteProtocolError(validation_message(exc, "server sent a bad job: ")) from None


_WIRE_VALIDATOR = _wire_validator()


class EncodedJob:
    """A job already checked by its builder and encoded once: its ``jid`` and the compact
    JSON ``data`` that PUSH/PUSHB send as they are.

    The app's tasks hand these to the client (their options were checked when the task
    was declared and their arguments at the call), so a ``.delay()`` is validated and
    encoded once, not again by the client. Build one with :meth:`from_checked`.
    """

    __slots__ = ("data", "jid")

    def __init__(self, jid: str, data: bytes) -> None:
        self.jid = jid
        self.data = data

    def __repr__(self) -> str:
        return f"<EncodedJob jid={self.jid} {len(self.data)} bytes>"

    @classmethod
    def from_checked(cls, job: dict[str, Any]) -> EncodedJob:
        """Encode a job dict whose fields are already valid and JSON-compatible (such as
        :meth:`JobPayload.to_wire` gives, with a ``jid``), without validating it again.

        Anything out of the ordinary (a NaN, a lone surrogate, a value JSON cannot carry)
        takes the full path instead, :meth:`JobPayload.create` then :meth:`to_json_bytes`,
        so it fails with exactly the error a dict pushed through the client would.
        """
        try:
            data = _to_json(job)
        except (PydanticSerializationError, ValueError, TypeError):
            data = b""
        jid = job.get("jid")
        if not data or b"NaN" in data or b"Infinity" in data or not isinstance(jid, str):
            payload = JobPayload.create(**job)
            return cls(payload.jid, payload.to_json_bytes())
        return cls(jid, data)

    def to_wire(self) -> dict[str, Any]:
        """The job as a JSON object again (for reporting a job the server refused)."""
        value = json.loads(self.data)
        assert isinstance(value, dict)
        return value


def has_non_finite(text: str | bytes) -> bool:
    """Whether the JSON ``text`` holds a bare ``NaN``/``Infinity`` (which JSON does not
    allow, but Python's json writes): both the job encoders refuse such a payload."""
    found = False

    def _constant(_name: str) -> float:
        nonlocal found
        found = True
        return 0.0

    json.loads(text, parse_constant=_constant)
    return found


def _unserialisable(jid: str, exc: PydanticSerializationError) -> ValidationError:
    # args and custom take Any at creation; what JSON cannot carry is found only here.
    return ValidationError(f"invalid job: job {jid} cannot be sent as JSON: {exc}")


def _first_field(exc: PydanticValidationError) -> str | None:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["loc"]:
        return str(errors[0]["loc"][0])
    return None


class Hi(_Model):
    """The server's greeting: ``+HI {"v":2}`` or, with a password, ``{"v":2,"i":N,"s":SALT}``."""

    v: int
    i: int | None = None
    s: str | None = None

    @property
    def needs_password(self) -> bool:
        """True when the server sent a salt: HELLO must carry a ``pwdhash``."""
        return self.s is not None


class Hello(_Model):
    """The client's answer to HI. Without ``wid`` the connection is a producer only."""

    v: int = 2
    hostname: str | None = None
    wid: str | None = None
    pid: int | None = None
    labels: list[str] | None = None
    pwdhash: str | None = None


class RejectedJob(_Model):
    """A job PUSHB refused: its jid, the server's reason, and the job as it was sent."""

    jid: str
    reason: str
    payload: dict[str, Any]

    @property
    def not_unique(self) -> bool:
        """Whether Faktory Enterprise refused the job as a duplicate of a unique job (its
        reason is the coded error text, ``NOTUNIQUE Job not unique``)."""
        return self.reason.startswith("NOTUNIQUE")


class TaskStats(BaseModel):
    """One background task of the server, as INFO's ``faktory.tasks`` reports it.

    Faktory 1.10.0 has scanners (``Scheduled``, ``Retries``, ``Dead``: ``cycles`` runs,
    ``enqueued`` jobs moved (purged, for Dead), ``wall_time_sec`` spent) and reapers
    (``Busy`` for expired reservations, ``Workers`` for silent heartbeats: ``reaped``
    entries). Each has ``size``: its set's size, the reserved jobs (Busy) or the
    registered worker processes (Workers). Fields a server leaves out are None."""

    model_config = ConfigDict(extra="allow")

    cycles: int | None = None
    enqueued: int | None = None
    reaped: int | None = None
    size: int | None = None
    wall_time_sec: float | None = None


class FaktoryInfo(BaseModel):
    """The ``faktory`` block of INFO: queue sizes, set sizes, background tasks, totals."""

    model_config = ConfigDict(extra="allow")

    queues: dict[str, int] = Field(default_factory=dict)
    sets: dict[str, int] = Field(default_factory=dict)
    tasks: dict[str, TaskStats] = Field(default_factory=dict)
    total_failures: int = 0
    total_processed: int = 0
    total_enqueued: int = 0
    total_queues: int = 0

    def task_size(self, name: str) -> int | None:
        """``tasks[name].size`` (``"Retries"``, ``"Workers"``...), or None when the server
        did not report it."""
        task = self.tasks.get(name)
        return None if task is None else task.size

    @property
    def registered_workers(self) -> int | None:
        """Worker processes the server knows (``tasks.Workers.size``), None if not said."""
        return self.task_size("Workers")

    @property
    def busy_jobs(self) -> int | None:
        """Jobs reserved by workers right now (``tasks.Busy.size``), None if not said."""
        return self.task_size("Busy")


class ServerInfo(BaseModel):
    """The ``server`` block of INFO: version, uptime, connections, commands, memory."""

    model_config = ConfigDict(extra="allow")

    description: str = ""
    faktory_version: str = ""
    uptime: int = 0
    connections: int = 0
    command_count: int = 0
    used_memory_mb: int = 0


class Info(BaseModel):
    """The INFO reply, typed. ``raw`` keeps the server's document as it came."""

    model_config = ConfigDict(extra="allow")

    now: str | None = None
    server_utc_time: str | None = None
    faktory: FaktoryInfo = Field(default_factory=FaktoryInfo)
    server: ServerInfo = Field(default_factory=ServerInfo)
    raw: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> Info:
        """Type the document a server sent, keeping it whole in ``raw``; a document of the
        wrong shape raises RemoteProtocolError."""
        try:
            info = cls.model_validate(raw)
        except PydanticValidationError as exc:
            raise RemoteProtocolError(validation_message(exc, "server sent a bad INFO: ")) from None
        info.raw = raw
        return info
