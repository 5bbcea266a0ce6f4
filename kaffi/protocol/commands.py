"""The client's side of the Faktory Work Protocol: commands to bytes, replies to values.

Each ``encode_*`` function returns the exact bytes of one command line. Each ``decode_*``
function takes the :data:`~kaffi.protocol.resp.Reply` the server sent for that command and
returns a Python value, or raises :class:`~kaffi.errors.ServerError` (``-ERR``) or
:class:`~kaffi.errors.RemoteProtocolError` (a reply of the wrong kind).

Nothing here opens a socket; the sync and asyncio transports in :mod:`kaffi.client` are
thin shells that write these bytes and feed what they read to a
:class:`~kaffi.protocol.resp.ReplyParser`.

Two protocol facts shape the encoders:

- JSON is sent compact (``{"a":1}``): Faktory's MUTATE splits its line on spaces and
  refuses ``{"cmd": "kill"}``. Spaces *inside* strings are sent as ``\\u0020`` there,
  which JSON reads back as a space, so any filter value survives.
- A command is one line, so no argument may contain a line break; JSON escapes them, and
  queue names cannot hold them (they must match ``[a-zA-Z0-9._-]+``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from kaffi.errors import (
    AuthenticationError,
    BatchNotFound,
    EnterpriseRequired,
    LocalProtocolError,
    NotUnique,
    RemoteProtocolError,
    ServerError,
    ValidationError,
)
from kaffi.protocol.batches import BatchStatus
from kaffi.protocol.enterprise import Progress
from kaffi.protocol.models import (
    FAIL_ERRTYPE_MAX,
    FAIL_MESSAGE_MAX,
    MAX_BACKTRACE,
    EncodedJob,
    Hello,
    Hi,
    Info,
    JobPayload,
    RejectedJob,
    dumps,
    has_non_finite,
    validate_queue_name,
)
from kaffi.protocol.resp import BulkReply, ErrorReply, Reply, SimpleReply
from kaffi.protocol.rfc3339 import RFC3339Error

_Document = TypeVar("_Document", bound=BaseModel)

__all__ = [
    "MUTATE_COMMANDS",
    "MUTATE_TARGETS",
    "QUEUE_SUBCOMMANDS",
    "BEAT_STATES",
    "GO_SPACE",
    "encode_line",
    "encode_hello",
    "encode_push",
    "encode_pushb",
    "encode_fetch",
    "encode_ack",
    "encode_fail",
    "format_backtrace",
    "format_exception_backtrace",
    "encode_beat",
    "encode_info",
    "encode_flush",
    "encode_end",
    "encode_mutate",
    "encode_queue",
    "encode_batch",
    "encode_track",
    "password_hash",
    "decode_hi",
    "decode_ok",
    "decode_json",
    "decode_fetch",
    "decode_beat",
    "decode_pushb",
    "decode_info",
    "decode_latency",
    "decode_progress",
    "decode_bid",
    "decode_batch_status",
    "raise_for_error",
]

MUTATE_COMMANDS = ("clear", "kill", "discard", "requeue")
MUTATE_TARGETS = ("retries", "scheduled", "dead")
QUEUE_SUBCOMMANDS = ("PAUSE", "RESUME", "REMOVE", "LATENCY")
BEAT_STATES = ("quiet", "terminate")

MutateCommand = Literal["clear", "kill", "discard", "requeue"]
MutateTarget = Literal["retries", "scheduled", "dead"]


def encode_line(verb: str, arg: str | None = None) -> bytes:
    """``VERB[ ARG]\\r\\n``; refuses anything that would break the line framing."""
    if not verb or not verb.isascii() or " " in verb or "\n" in verb or "\r" in verb:
        raise LocalProtocolError(f"bad command verb {verb!r}")
    if arg is None:
        return verb.encode() + b"\r\n"
    if "\n" in arg or "\r" in arg:
        raise LocalProtocolError(f"{verb} argument cannot contain a line break")
    try:
        data = arg.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (surrogateescape-decoded bytes) have no UTF-8 form.
        raise LocalProtocolError(f"{verb} argument is not encodable as UTF-8") from None
    return verb.encode() + b" " + data + b"\r\n"


# -- handshake ----------------------------------------------------------------------------


def password_hash(password: str, salt: str, iterations: int) -> str:
    """Faktory's pwdhash: sha256(password + salt), then sha256 of that digest again until
    ``iterations`` rounds in all; lowercase hex of the last digest."""
    if iterations < 1:
        raise RemoteProtocolError(f"server asked for {iterations} hash iterations")
    digest = hashlib.sha256((password + salt).encode("utf-8")).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def decode_hi(reply: Reply) -> Hi:
    """Parse ``+HI {...}``."""
    if isinstance(reply, ErrorReply):
        raise_for_error(reply, "HI")
    if not isinstance(reply, SimpleReply) or not reply.text.startswith("HI "):
        raise RemoteProtocolError(f"expected the server's +HI greeting, got {reply!r}")
    try:
        hi = Hi.model_validate_json(reply.text[3:])
    except ValueError:
        raise RemoteProtocolError(f"bad HI greeting: {reply.text[:200]!r}") from None
    if hi.v != 2:
        # Protocol v2 is all Faktory has shipped since 0.9; anything else is a different peer.
        raise RemoteProtocolError(f"server speaks protocol version {hi.v}, kaffi speaks 2")
    return hi


def encode_hello(
    hi: Hi,
    *,
    hostname: str | None = None,
    wid: str | None = None,
    pid: int | None = None,
    labels: Sequence[str] | None = None,
    password: str | None = None,
) -> bytes:
    """The HELLO answering ``hi``. A worker passes ``wid`` (and usually pid, labels)."""
    pwdhash = None
    if hi.needs_password:
        if not password:
            raise AuthenticationError(
                "ERR", "Server requires a password, but none was given", command="HELLO"
            )
        assert hi.s is not None
        pwdhash = password_hash(password, hi.s, hi.i or 1)
    hello = Hello(
        hostname=hostname,
        wid=wid,
        pid=pid if wid is not None else None,
        labels=list(labels) if (labels is not None and wid is not None) else None,
        pwdhash=pwdhash,
    )
    return encode_line("HELLO", hello.model_dump_json(exclude_none=True))


# -- jobs ---------------------------------------------------------------------------------


def _payload_json(job: JobPayload | EncodedJob | Mapping[str, Any]) -> bytes:
    if isinstance(job, JobPayload):
        return job.to_json_bytes()
    if isinstance(job, EncodedJob):
        return job.data
    return _utf8("PUSHB", dumps(dict(job)))


def _utf8(verb: str, text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (surrogateescape-decoded bytes) have no UTF-8 form.
        raise LocalProtocolError(f"{verb} argument is not encodable as UTF-8") from None


def encode_push(job: JobPayload | EncodedJob | Mapping[str, Any]) -> bytes:
    """``PUSH {job}``. A mapping is sent as it is (the server validates it); an
    :class:`~kaffi.protocol.models.EncodedJob` is sent as it was encoded."""
    # Compact JSON has no raw line breaks (they are escaped inside strings), so a job's
    # JSON needs none of encode_line's checks. An EncodedJob (every .delay()) is tested
    # first, by exact type: the cheapest check there is, before pydantic's isinstance.
    if type(job) is EncodedJob:
        return b"PUSH " + job.data + b"\r\n"
    if isinstance(job, JobPayload):
        return b"PUSH " + job.to_json_bytes() + b"\r\n"
    if isinstance(job, EncodedJob):
        return b"PUSH " + job.data + b"\r\n"
    return encode_line("PUSH", dumps(dict(job)))


def encode_pushb(jobs: Iterable[JobPayload | EncodedJob | Mapping[str, Any]]) -> bytes:
    """``PUSHB [{job},...]``."""
    batch = jobs if isinstance(jobs, list) else list(jobs)
    if batch and all(type(j) is JobPayload for j in batch):
        # One call into pydantic-core for the whole batch: the same bytes as joining each
        # job's to_json(), about 3x cheaper per job (bench/notes.md has the measurements).
        body = _payload_list_adapter().dump_json(cast(list[JobPayload], batch), exclude_none=True)
        if (b"NaN" in body or b"Infinity" in body) and has_non_finite(body):
            # Name the job, as PUSH would (this raises).
            for job in cast(list[JobPayload], batch):
                job.to_json_bytes()
        return b"PUSHB " + body + b"\r\n"
    return b"PUSHB [" + b",".join([_payload_json(j) for j in batch]) + b"]\r\n"


@functools.cache
def _payload_list_adapter() -> TypeAdapter[list[JobPayload]]:
    # Built on first use: building its schema at import would slow every `import kaffi`.
    # The JSON float setting is the adapter's, not the model's: without it a NaN would be
    # written as null, silently changing the job (encode_pushb refuses it instead).
    return TypeAdapter(list[JobPayload], config=ConfigDict(ser_json_inf_nan="constants"))


def encode_fetch(*queues: str) -> bytes:
    """``FETCH q1 q2 ...``: the server tries the queues strictly in this order."""
    if not queues:
        raise ValidationError("FETCH needs at least one queue", field="queues")
    for q in queues:
        validate_queue_name(q, field="queues")
    return encode_line("FETCH", " ".join(queues))


#: jids that need no JSON escaping (what Faktory clients generate: hex, base64url, uuids).
_PLAIN_JID = re.compile(r"[A-Za-z0-9_.:-]+")


def encode_ack(jid: str) -> bytes:
    """``ACK {"jid":J}``: the job succeeded (the server answers +OK even for an unknown jid).

    A worker sends one per job, so a jid that needs no JSON escaping is put into a byte
    template: the same bytes as the JSON encoder gives, for a twentieth of its cost.
    """
    # isalnum() alone admits non-ASCII letters and digits; isascii() rules them out.
    if (jid.isalnum() and jid.isascii()) or _PLAIN_JID.fullmatch(jid):
        return b'ACK {"jid":"' + jid.encode("ascii") + b'"}\r\n'
    return encode_line("ACK", dumps({"jid": jid}))


#: What Go's strings.TrimSpace removes (unicode.IsSpace): Python's str.strip() would also
#: remove \x1c-\x1f, which Faktory keeps.
GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(text: str) -> str:
    # Lone surrogates (an exception text built from surrogateescape-decoded bytes) have no
    # UTF-8 form; U+FFFD is what Go's JSON decoder would store for them. A FAIL must never
    # be impossible to send.
    return _SURROGATE.sub("\ufffd", text)


def _fail_text(text: str, limit: int) -> str:
    # Faktory trims surrounding whitespace *before* cutting, so trim first or leading
    # blanks would eat into what the server keeps. Go cuts bytes, which never keeps more
    # than these characters.
    return _no_surrogates(text.strip(GO_SPACE)[:limit])


def encode_fail(
    jid: str, errtype: str, message: str, backtrace: Sequence[str] | None = None
) -> bytes:
    """``FAIL {...}``, cut to the sizes the server keeps (errtype 100, message 1000
    characters after trimming surrounding whitespace, 50 backtrace lines) so a huge
    traceback costs nothing on the wire."""
    body: dict[str, Any] = {
        "jid": jid,
        "errtype": _fail_text(errtype, FAIL_ERRTYPE_MAX),
        "message": _fail_text(message, FAIL_MESSAGE_MAX),
    }
    if backtrace:
        body["backtrace"] = [_no_surrogates(line) for line in backtrace[:MAX_BACKTRACE]]
    return encode_line("FAIL", dumps(body))


def format_backtrace(
    frames: Iterable[traceback.FrameSummary], limit: int | None = None
) -> list[str]:
    """The backtrace lines a FAIL carries: ``file:line in function: source`` per frame,
    innermost first (so the server's 50-line cap keeps the frames closest to the error),
    at most ``limit`` lines (a job's ``backtrace`` field; None: the server's 50).

    The source text comes from :mod:`linecache`, as in any Python traceback."""
    cap = MAX_BACKTRACE if limit is None else max(0, min(limit, MAX_BACKTRACE))
    if cap == 0:
        return []
    lines = []
    for fs in reversed(list(frames)):
        source = f": {fs.line.strip()}" if fs.line else ""
        lines.append(f"{fs.filename}:{fs.lineno} in {fs.name}{source}")
        if len(lines) == cap:
            break
    return lines


def format_exception_backtrace(exc: BaseException, limit: int | None = None) -> list[str]:
    """:func:`format_backtrace` of the frames ``exc`` was raised through (none if it was
    never raised)."""
    return format_backtrace(traceback.extract_tb(exc.__traceback__), limit)


def encode_beat(wid: str, current_state: str | None = None, rss_kb: int | None = None) -> bytes:
    """``BEAT {"wid","current_state","rss_kb"}``: a worker's heartbeat; ``current_state``
    (``"quiet"``/``"terminate"``) reports the state the worker is in, None leaves it out."""
    body: dict[str, Any] = {"wid": wid}
    if current_state is not None:
        if current_state not in BEAT_STATES:
            raise ValidationError(
                f"current_state must be one of {BEAT_STATES} or None, got {current_state!r}",
                field="current_state",
            )
        body["current_state"] = current_state
    if rss_kb is not None:
        body["rss_kb"] = int(rss_kb)
    return encode_line("BEAT", dumps(body))


def encode_info() -> bytes:
    """``INFO``: ask for the server's state as a JSON document."""
    return b"INFO\r\n"


def encode_flush() -> bytes:
    """``FLUSH``: delete every job in every queue and set."""
    return b"FLUSH\r\n"


def encode_end() -> bytes:
    """``END``: the polite goodbye; the server closes the connection without a reply."""
    return b"END\r\n"


def _json_no_spaces(value: Any) -> str:
    # Escaping spaces inside strings as \u0020 keeps JSON's meaning and the server's split.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace(" ", "\\u0020")


def encode_mutate(
    cmd: str,
    target: str,
    *,
    jobtype: str | None = None,
    jids: Sequence[str] | None = None,
    regexp: str | None = None,
) -> bytes:
    """``MUTATE {"cmd","target","filter"}``. ``regexp`` is a Redis SCAN glob (``*text*``)."""
    if cmd not in MUTATE_COMMANDS:
        raise ValidationError(
            f"mutate cmd must be one of {MUTATE_COMMANDS}, got {cmd!r}", field="cmd"
        )
    if target not in MUTATE_TARGETS:
        raise ValidationError(
            f"mutate target must be one of {MUTATE_TARGETS}, got {target!r}", field="target"
        )
    body: dict[str, Any] = {"cmd": cmd, "target": target}
    flt: dict[str, Any] = {}
    if jobtype is not None:
        flt["jobtype"] = jobtype
    if jids:
        flt["jids"] = list(jids)
    if regexp is not None:
        flt["regexp"] = regexp
    if flt:
        body["filter"] = flt
    return encode_line("MUTATE", _json_no_spaces(body))


def encode_queue(subcommand: str, *names: str) -> bytes:
    """``QUEUE PAUSE|RESUME|REMOVE|LATENCY name...``; ``*`` means every queue (not for
    LATENCY, which the server refuses with wildcards)."""
    sub = subcommand.upper()
    if sub not in QUEUE_SUBCOMMANDS:
        raise ValidationError(
            f"queue subcommand must be one of {QUEUE_SUBCOMMANDS}, got {subcommand!r}",
            field="subcommand",
        )
    if not names:
        raise ValidationError(f"QUEUE {sub} needs at least one queue name", field="queues")
    for n in names:
        if n == "*" and sub != "LATENCY":
            continue
        validate_queue_name(n, field="queues")
    return encode_line("QUEUE", sub + " " + " ".join(names))


def _enterprise_subcommand(verb: str, subcommand: str) -> str:
    sub = subcommand.upper()
    if not sub or not sub.isascii() or not sub.isalpha():
        raise ValidationError(
            f"{verb} subcommand must be one word such as NEW or GET, got {subcommand!r}",
            field="subcommand",
        )
    return sub


def encode_batch(subcommand: str, arg: str | Mapping[str, Any]) -> bytes:
    """Faktory Enterprise ``BATCH NEW {...}`` / ``BATCH OPEN bid`` / ``COMMIT`` / ``STATUS``.
    The open-source server answers ``-ERR batch subsystem is only available in Faktory
    Enterprise``."""
    sub = _enterprise_subcommand("BATCH", subcommand)
    text = arg if isinstance(arg, str) else dumps(dict(arg))
    return encode_line("BATCH", f"{sub} {text}")


def encode_track(subcommand: str, arg: str | Mapping[str, Any]) -> bytes:
    """Faktory Enterprise ``TRACK GET jid`` / ``TRACK SET {...}``."""
    sub = _enterprise_subcommand("TRACK", subcommand)
    text = arg if isinstance(arg, str) else dumps(dict(arg))
    return encode_line("TRACK", f"{sub} {text}")


# -- replies ------------------------------------------------------------------------------


#: How the open-source server ends its reply to an Enterprise command (ENTERPRISE.md
#: section 8: "batch subsystem is only available in Faktory Enterprise", "tracking ...").
_ENTERPRISE_ONLY = "only available in Faktory Enterprise"
#: How Enterprise starts its reply naming an unknown batch ("No such batch" before 1.9.2,
#: lowercase since; ENTERPRISE.md section 1).
_NO_SUCH_BATCH = "no such batch"


def raise_for_error(
    reply: ErrorReply, command: str | None = None, *, jobtype: str | None = None
) -> None:
    """Raise the kaffi error for an error reply: :class:`~kaffi.errors.NotUnique` for
    ``-NOTUNIQUE`` (``jobtype`` names the refused job), :class:`~kaffi.errors.EnterpriseRequired`
    for an open-source server's refusal of an Enterprise command,
    :class:`~kaffi.errors.BatchNotFound` for ``-ERR no such batch <bid>``."""
    if reply.message.startswith("Invalid password"):
        raise AuthenticationError(reply.code, reply.message, command=command)
    if reply.code == "NOTUNIQUE":
        raise NotUnique(reply.code, reply.message, command=command, jobtype=jobtype)
    if reply.code == "ERR" and reply.message.endswith(_ENTERPRISE_ONLY):
        raise EnterpriseRequired(reply.code, reply.message, command=command)
    if reply.code == "ERR" and reply.message[: len(_NO_SUCH_BATCH)].lower() == _NO_SUCH_BATCH:
        named = reply.message[len(_NO_SUCH_BATCH) :].split()
        bid = named[0] if named else None
        raise BatchNotFound(reply.code, reply.message, command=command, bid=bid)
    raise ServerError(reply.code, reply.message, command=command)


def decode_progress(reply: Reply) -> Progress:
    """``TRACK GET``'s document, typed."""
    return _decode_document(reply, "TRACK GET", Progress)


def _decode_document(reply: Reply, command: str, model: type[_Document]) -> _Document:
    """A bulk JSON object read into ``model``; anything else is the server out of step."""
    doc = decode_json(reply, command)
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"expected a JSON object to {command}, got {doc!r}")
    try:
        return model.model_validate(doc)
    except (PydanticValidationError, RFC3339Error) as exc:
        raise RemoteProtocolError(f"unexpected {command} reply {doc!r}: {exc}") from None


def decode_bid(reply: Reply, command: str) -> str:
    """A batch id: ``BATCH NEW``'s and ``BATCH OPEN``'s bulk string (a simple string is
    taken too, as the Go client reads either)."""
    bid: str | None = None
    if isinstance(reply, BulkReply) and reply.data is not None:
        bid = reply.data.decode("utf-8", errors="replace")
    elif isinstance(reply, SimpleReply):
        bid = reply.text
    elif isinstance(reply, ErrorReply):
        raise_for_error(reply, command)
    if not bid or any(c.isspace() for c in bid):
        raise RemoteProtocolError(f"expected a batch id to {command}, got {reply!r}")
    return bid


def decode_batch_status(reply: Reply) -> BatchStatus:
    """``BATCH STATUS``'s document, typed."""
    return _decode_document(reply, "BATCH STATUS", BatchStatus)


def decode_ok(reply: Reply, command: str = "") -> None:
    """For commands answering ``+OK``."""
    if isinstance(reply, SimpleReply) and reply.text == "OK":
        return
    if isinstance(reply, ErrorReply):
        raise_for_error(reply, command or None)
    raise RemoteProtocolError(f"expected +OK{' to ' + command if command else ''}, got {reply!r}")


def decode_json(reply: Reply, command: str = "") -> Any:
    """For commands answering a bulk JSON document; ``$-1`` gives None."""
    if isinstance(reply, BulkReply):
        if reply.data is None:
            return None
        try:
            return json.loads(reply.data)
        except (ValueError, RecursionError):
            # RecursionError: a hostile document nested deeper than Python's stack.
            raise RemoteProtocolError(
                f"server sent invalid JSON{' to ' + command if command else ''}: "
                f"{reply.data[:200]!r}"
            ) from None
    if isinstance(reply, ErrorReply):
        raise_for_error(reply, command or None)
    raise RemoteProtocolError(
        f"expected a bulk reply{' to ' + command if command else ''}, got {reply!r}"
    )


def decode_fetch(reply: Reply) -> JobPayload | None:
    """A job, or None when the queues stayed empty for the server's ~2 s wait."""
    if isinstance(reply, BulkReply):
        if reply.data is None:
            return None
        return JobPayload.from_wire(reply.data)
    if isinstance(reply, ErrorReply):
        raise_for_error(reply, "FETCH")
    raise RemoteProtocolError(f"expected a job or $-1 to FETCH, got {reply!r}")


def decode_beat(reply: Reply) -> str:
    """``"OK"``, or the state the server asks the worker to enter: ``"quiet"``/``"terminate"``."""
    if isinstance(reply, SimpleReply) and reply.text == "OK":
        return "OK"
    doc = decode_json(reply, "BEAT")
    state = doc.get("state") if isinstance(doc, dict) else None
    if state not in BEAT_STATES:
        raise RemoteProtocolError(f"unexpected BEAT reply {doc!r}")
    assert isinstance(state, str)
    return state


def decode_pushb(
    reply: Reply, jobs: Sequence[JobPayload | EncodedJob | Mapping[str, Any]]
) -> list[RejectedJob]:
    """The jobs the server refused, each with its reason, in the order they were sent."""
    doc = decode_json(reply, "PUSHB")
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"expected a JSON object to PUSHB, got {doc!r}")
    if not doc:
        return []
    rejected: list[RejectedJob] = []
    for job in jobs:
        jid = job.jid if isinstance(job, JobPayload | EncodedJob) else job.get("jid")
        if isinstance(jid, str) and jid in doc:
            payload = job.to_wire() if isinstance(job, JobPayload | EncodedJob) else dict(job)
            rejected.append(RejectedJob(jid=jid, reason=str(doc.pop(jid)), payload=payload))
    # A jid the server names that we did not send (or sent twice) still gets reported.
    for jid, reason in doc.items():
        rejected.append(RejectedJob(jid=str(jid), reason=str(reason), payload={}))
    return rejected


def decode_info(reply: Reply) -> Info:
    """The INFO document, typed (:class:`~kaffi.protocol.models.Info`; ``.raw`` keeps it all)."""
    doc = decode_json(reply, "INFO")
    if not isinstance(doc, dict):
        raise RemoteProtocolError(f"expected a JSON object to INFO, got {doc!r}")
    return Info.from_raw(doc)


def decode_latency(reply: Reply) -> dict[str, float]:
    """``QUEUE LATENCY``'s ``{queue: seconds}``: how long each queue's oldest job has waited."""
    doc = decode_json(reply, "QUEUE LATENCY")
    if not isinstance(doc, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in doc.values()
    ):
        raise RemoteProtocolError(f"expected {{queue: seconds}} to QUEUE LATENCY, got {doc!r}")
    return {str(k): float(v) for k, v in doc.items()}
