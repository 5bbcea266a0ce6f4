"""Job payloads as the server sees them: validation with Faktory's texts, and encoding.

A PUSHed job arrives as raw JSON. :func:`parse_job` checks it with exactly the rules and
``-ERR`` texts of Faktory 1.10.0 (Go's decoder errors included), drops unknown top-level
fields and fills in the defaults. :func:`encode_job` writes it back in the field order the
real server uses (``retry, failure, custom, jid, queue, jobtype, created_at, enqueued_at,
at, args, reserve_for, backtrace``), with the keys of nested objects sorted as Go sorts
map keys. The server keeps queued jobs as these bytes, so a FETCH costs no re-encoding.

No I/O here.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

from kaffi.server import gocompat

__all__ = [
    "JobRejected",
    "parse_job",
    "parse_job_value",
    "encode_job",
    "decode_job",
    "now_string",
    "time_string",
    "at_timestamp",
    "DEFAULT_RETRY",
    "DEFAULT_RESERVE_FOR",
    "MIN_RESERVE_FOR",
    "MAX_RESERVE_FOR",
    "reservation_seconds",
]

DEFAULT_RETRY = 25
DEFAULT_RESERVE_FOR = 1800
MIN_RESERVE_FOR = 60
MAX_RESERVE_FOR = 86400
_QUEUE_RE = re.compile(r"[a-zA-Z0-9._-]+")


def reservation_seconds(reserve_for: int) -> int:
    """How long a job is reserved for: its ``reserve_for`` (default 1800 s), kept
    between 60 s and a day."""
    return min(max(reserve_for or DEFAULT_RESERVE_FOR, MIN_RESERVE_FOR), MAX_RESERVE_FOR)


# Go struct field name -> Go type, for the messages of UnmarshalTypeError.
_STRING_FIELDS = ("jid", "queue", "jobtype", "created_at", "enqueued_at", "at")
_INT_FIELDS = ("retry", "reserve_for", "backtrace")
_JOB_FIELDS = (
    "retry",
    "failure",
    "custom",
    "jid",
    "queue",
    "jobtype",
    "created_at",
    "enqueued_at",
    "at",
    "args",
    "reserve_for",
    "backtrace",
)
_JOB_FIELD_FOLD = {name.lower(): name for name in _JOB_FIELDS}
_FAILURE_FIELDS = (
    "failed_at",
    "next_at",
    "message",
    "errtype",
    "backtrace",
    "retry_count",
    "remaining",
)
_FAILURE_FIELD_FOLD = {name.lower(): name for name in _FAILURE_FIELDS}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class JobRejected(ValueError):
    """A PUSHed job the server refuses; ``str(exc)`` is the ``-ERR`` text."""


#: The last whole second formatted by time_string and its text: a PUSH stamps one or two
#: times, nearly always within the same second, and strftime(gmtime()) was ~7% of the
#: server's CPU on one-round-trip PUSHes. One tuple, replaced whole, so threads that
#: format at once (the server's loop, a test) never see a second paired with another's text.
_last_second: tuple[int, str] = (-1, "")


def time_string(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC for a time in nanoseconds since the epoch."""
    global _last_second
    seconds, nanos = divmod(ns, 1_000_000_000)
    cached_second, base = _last_second
    if seconds != cached_second:
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, base)
    if nanos:
        return base + "." + f"{nanos:09d}".rstrip("0") + "Z"
    return base + "Z"


def now_string() -> str:
    """Now, as Faktory writes ``created_at``/``enqueued_at`` (RFC 3339 nanoseconds, UTC)."""
    return time_string(time.time_ns())


def at_timestamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time (already validated)."""
    return gocompat.parse_rfc3339(text).timestamp()


def _int_field(value: Any, struct: str, path: str) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = gocompat.type_name(value)
        return None, gocompat.unmarshal_type_error(kind, struct, path, "int")
    if isinstance(value, float) or not _INT64_MIN <= value <= _INT64_MAX:
        text = json.dumps(value)
        return None, gocompat.unmarshal_type_error(f"number {text}", struct, path, "int")
    return value, None


def _string_field(value: Any, struct: str, path: str) -> tuple[str | None, str | None]:
    if value is None or isinstance(value, str):
        return value, None
    return None, gocompat.unmarshal_type_error(gocompat.type_name(value), struct, path, "string")


def _failure(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """Decode a ``failure`` object as Go decodes into ``*client.Failure``."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        return None, gocompat.unmarshal_type_error(
            gocompat.type_name(value), "Job", "failure", "client.Failure"
        )
    out: dict[str, Any] = {
        "failed_at": "",
        "next_at": "",
        "message": "",
        "errtype": "",
        "backtrace": None,
        "retry_count": 0,
        "remaining": 0,
    }
    first_error: str | None = None
    for key, raw in value.items():
        name = key if key in out else _FAILURE_FIELD_FOLD.get(key.lower())
        if name is None:
            continue
        path = "failure." + name
        err: str | None
        if name in ("retry_count", "remaining"):
            number, err = _int_field(raw, "Failure", path)
            if number is not None:
                out[name] = number
        elif name == "backtrace":
            lines, err = _string_list(raw, path)
            if err is None:
                out[name] = lines
        else:
            text, err = _string_field(raw, "Failure", path)
            if text is not None:
                out[name] = text
        if err and first_error is None:
            first_error = err
    return out, first_error


def _string_list(value: Any, path: str) -> tuple[list[str] | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, list):
        kind = gocompat.type_name(value)
        return None, gocompat.unmarshal_type_error(kind, "Failure", path, "[]string")
    for item in value:
        if item is not None and not isinstance(item, str):
            kind = gocompat.type_name(item)
            return None, gocompat.unmarshal_type_error(kind, "Failure", path, "string")
    return [item or "" for item in value], None


def parse_job(text: str) -> dict[str, Any]:
    """Decode and validate one PUSH argument; raise :class:`JobRejected` with Go's text."""
    try:
        value = gocompat.loads(text)
    except gocompat.GoJSONError as exc:
        raise JobRejected(f"invalid JSON: {exc}") from None
    return parse_job_value(value, top_type="client.Job")


def parse_job_value(value: Any, *, top_type: str = "client.Job") -> dict[str, Any]:
    """Validate an already decoded job (one element of PUSHB, say)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        kind = gocompat.type_name(value)
        raise JobRejected(
            f"invalid JSON: json: cannot unmarshal {kind} into Go value of type {top_type}"
        )
    job = decode_fields(value)
    validate(job)
    return job


def decode_fields(value: dict[str, Any]) -> dict[str, Any]:
    """Keep the fields Faktory keeps, typed as Go would decode them into ``client.Job``."""
    job: dict[str, Any] = {}
    first_error: str | None = None
    for key, raw in value.items():
        name = key if key in _JOB_FIELD_FOLD.values() else _JOB_FIELD_FOLD.get(key.lower())
        if name is None:
            continue  # unknown top-level fields (priority included) are dropped
        err: str | None = None
        if name in _STRING_FIELDS:
            text, err = _string_field(raw, "Job", name)
            if err is None:
                job[name] = text
        elif name in _INT_FIELDS:
            number, err = _int_field(raw, "Job", name)
            if err is None:
                job[name] = number
        elif name == "args":
            if raw is None or isinstance(raw, list):
                job["args"] = raw
            else:
                kind = gocompat.type_name(raw)
                err = gocompat.unmarshal_type_error(kind, "Job", "args", "[]interface {}")
        elif name == "custom":
            if raw is None or isinstance(raw, dict):
                job["custom"] = raw
            else:
                kind = gocompat.type_name(raw)
                err = gocompat.unmarshal_type_error(
                    kind, "Job", "custom", "map[string]interface {}"
                )
        else:  # failure
            failure, err = _failure(raw)
            if err is None:
                job["failure"] = failure
        if err and first_error is None:
            first_error = err
    if first_error:
        raise JobRejected("invalid JSON: " + first_error)
    return job


def validate(job: dict[str, Any]) -> None:
    """Faktory's checks, in its order, then its defaults (``retry`` 25, ``queue`` default)."""
    jid = job.get("jid") or ""
    if len(jid) < 8:
        raise JobRejected("jobs must have a reasonable jid parameter")
    if not job.get("jobtype"):
        raise JobRejected("jobs must have a jobtype parameter")
    if job.get("args") is None:
        raise JobRejected("jobs must have an args parameter")
    if (job.get("reserve_for") or 0) > MAX_RESERVE_FOR:
        raise JobRejected("jobs cannot be reserved for more than one day")
    at = job.get("at")
    if at:
        try:
            gocompat.parse_rfc3339(at)
        except ValueError as exc:
            raise JobRejected(f"invalid timestamp for 'at': {json.dumps(at)}: {exc}") from None
    queue = job.get("queue") or "default"
    if not _QUEUE_RE.fullmatch(queue):
        raise JobRejected(
            f"cannot get {json.dumps(queue, ensure_ascii=False)} queue: "
            "queue names must match \\A[a-zA-Z0-9._-]+\\z"
        )
    job["queue"] = queue
    if job.get("retry") is None:
        job["retry"] = DEFAULT_RETRY


def at_of(job: dict[str, Any]) -> datetime | None:
    """The job's ``at`` as a datetime (already validated), or None when it has none."""
    at = job.get("at")
    return gocompat.parse_rfc3339(at) if at else None


def _dump(value: Any) -> str:
    if type(value) is str and _JSON_PLAIN.fullmatch(value):
        # Most values (jid, queue, jobtype, times) need no escape: json.dumps would only
        # add the quotes, at several times the cost.
        return '"' + value + '"'
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


#: Strings json.dumps(ensure_ascii=False) writes as they are, between quotes.
_JSON_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')


def _encode_failure(failure: dict[str, Any]) -> str:
    parts = ['"failed_at":' + _dump(failure.get("failed_at") or "")]
    for name in ("next_at", "message", "errtype"):
        if failure.get(name):
            parts.append(f'"{name}":' + _dump(failure[name]))
    if failure.get("backtrace"):
        parts.append('"backtrace":' + _dump(failure["backtrace"]))
    parts.append(f'"retry_count":{int(failure.get("retry_count") or 0):d}')
    parts.append(f'"remaining":{int(failure.get("remaining") or 0):d}')
    return "{" + ",".join(parts) + "}"


def encode_job(job: dict[str, Any]) -> bytes:
    """The job's JSON exactly as Faktory 1.10.0 writes it (field order and omissions)."""
    parts: list[str] = []
    retry = job.get("retry")
    if retry is not None:
        parts.append(f'"retry":{retry:d}')
    failure = job.get("failure")
    if failure is not None:
        parts.append('"failure":' + _encode_failure(failure))
    custom = job.get("custom")
    if custom:
        parts.append('"custom":' + _dump(custom))
    parts.append('"jid":' + _dump(job.get("jid") or ""))
    parts.append('"queue":' + _dump(job.get("queue") or ""))
    parts.append('"jobtype":' + _dump(job.get("jobtype") or ""))
    parts.append('"created_at":' + _dump(job.get("created_at") or ""))
    if job.get("enqueued_at"):
        parts.append('"enqueued_at":' + _dump(job["enqueued_at"]))
    if job.get("at"):
        parts.append('"at":' + _dump(job["at"]))
    parts.append('"args":' + _dump(job.get("args")))
    if job.get("reserve_for"):
        parts.append(f'"reserve_for":{job["reserve_for"]:d}')
    if job.get("backtrace"):
        parts.append(f'"backtrace":{job["backtrace"]:d}')
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def decode_job(data: bytes) -> dict[str, Any]:
    """Read back a job this module encoded (trusted: no validation)."""
    job: dict[str, Any] = json.loads(data)
    return job
