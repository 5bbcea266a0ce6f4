"""One client connection's side of the protocol, without I/O: handshake, then commands.

:class:`Session` takes :class:`~kaffi.protocol.resp.Command` frames and returns an
:class:`Outcome`: the bytes to send, and whether to go on, close, or block in FETCH (the
network layer then waits up to 2 s for :class:`~kaffi.server.core.ServerCore` to hand the
connection a job). Every reply text is Faktory 1.10.0's; see ``REFERENCE.md`` and the
transcript in ``../shared/faktory``.

Secrets: the password and the client's ``pwdhash`` are never logged or put in a reply.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from kaffi.protocol.commands import password_hash
from kaffi.protocol.resp import Command, encode_bulk, encode_error
from kaffi.server import gocompat
from kaffi.server.batches import BatchError
from kaffi.server.core import CoreError, ServerCore
from kaffi.server.enterprise import Enterprise, JobRefused
from kaffi.server.jobs import JobRejected, decode_fields, parse_job, validate

__all__ = ["Session", "Outcome", "CONTINUE", "CLOSE", "WAIT", "OK", "NULL"]

CONTINUE = 0
CLOSE = 1
WAIT = 2

OK = b"+OK\r\n"
NULL = b"$-1\r\n"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command leads to: the reply bytes (None: none) and CONTINUE, CLOSE or WAIT."""

    reply: bytes | None
    action: int = CONTINUE


_CONTINUE_OK = Outcome(OK)
_CLOSE_SILENTLY = Outcome(None, CLOSE)
_INTERNAL = Outcome(encode_error("internal error"))


def _error(message: str) -> Outcome:
    # A reply line cannot hold a line break; Go's texts never do, client data might.
    return Outcome(encode_error(message.replace("\r", " ").replace("\n", " ")))


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _str_or_null(value: object) -> bool:
    """A JSON string or null: what Faktory decodes into a Go string field."""
    return value is None or isinstance(value, str)


def _int_or_null(value: object) -> bool:
    """A JSON integer or null (never true/false): what Faktory decodes into a Go int."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


class Session:
    """The protocol state of one connection."""

    __slots__ = (
        "conn_id",
        "core",
        "fetch_queues",
        "greeted",
        "iterations",
        "password",
        "quiet_fetch",
        "salt",
        "wid",
    )

    def __init__(self, core: ServerCore, conn_id: int, password: str | None = None) -> None:
        self.core = core
        self.conn_id = conn_id
        self.password = password or None
        self.iterations = 0
        self.salt = ""
        if self.password:
            # As Faktory: 4000..8095 rounds and a random salt for every connection.
            self.iterations = 4000 + secrets.randbelow(4096)
            self.salt = format(secrets.randbits(63), "x")
        self.greeted = False
        self.wid = ""
        #: Set when handle() returned WAIT: the queues the blocked FETCH asked for.
        self.fetch_queues: list[str] = []
        #: True when the WAIT is a quiet worker's FETCH that must get nothing.
        self.quiet_fetch = False

    def greeting(self) -> bytes:
        """The ``+HI`` line, with this connection's salt and rounds when a password is set."""
        if self.password:
            return b'+HI {"v":2,"i":%d,"s":"%s"}\r\n' % (self.iterations, self.salt.encode())
        return b'+HI {"v":2}\r\n'

    def handle(self, cmd: Command) -> Outcome:
        """Run one command: HELLO first (anything else closes silently), then the verbs."""
        if not self.greeted:
            return self._hello(cmd)
        self.core.command_count += 1
        handler = _HANDLERS.get(cmd.verb)
        if handler is None:
            return _error(f"unknown command {cmd.verb}")
        try:
            return handler(self, cmd.arg)
        except _MissingArgument:
            return _INTERNAL

    # -- handshake ------------------------------------------------------------------------

    def _hello(self, cmd: Command) -> Outcome:
        if cmd.verb != "HELLO" or not cmd.arg or not cmd.arg.startswith("{"):
            return _CLOSE_SILENTLY
        try:
            hello = gocompat.loads(cmd.arg)
        except gocompat.GoJSONError:
            return _CLOSE_SILENTLY
        if not isinstance(hello, dict):
            return _CLOSE_SILENTLY
        wid = hello.get("wid")
        hostname = hello.get("hostname")
        pid = hello.get("pid")
        labels = hello.get("labels")
        version = hello.get("v")
        pwdhash = hello.get("pwdhash")
        if not (
            _str_or_null(wid)
            and _str_or_null(hostname)
            and _str_or_null(pwdhash)
            and _int_or_null(pid)
            and _int_or_null(version)
            and (labels is None or (isinstance(labels, list) and all(map(_is_str, labels))))
        ):
            return _CLOSE_SILENTLY
        if self.password:
            rounds = self.iterations if (version or 0) >= 2 else 1
            expected = password_hash(self.password, self.salt, rounds)
            if not hmac.compare_digest((pwdhash or "").encode(), expected.encode()):
                return Outcome(encode_error("Invalid password"), CLOSE)
        self.greeted = True
        if wid:
            self.wid = wid
            self.core.register(wid, hostname or "", pid or 0, list(labels or []), self.conn_id)
        return _CONTINUE_OK

    # -- commands -------------------------------------------------------------------------

    def _end(self, arg: str | None) -> Outcome:
        return _CLOSE_SILENTLY

    def _push(self, arg: str | None) -> Outcome:
        if arg is None:
            raise _MissingArgument
        try:
            job = parse_job(arg)
        except JobRejected as exc:
            return _error(str(exc))
        try:
            self.core.push(job)
        except JobRefused as exc:
            # A duplicate is -NOTUNIQUE Job not unique (ENTERPRISE.md section 3).
            return Outcome(encode_error(exc.message, exc.code))
        return _CONTINUE_OK

    def _pushb(self, arg: str | None) -> Outcome:
        if arg is None:
            raise _MissingArgument
        try:
            values = gocompat.loads(arg)
        except gocompat.GoJSONError as exc:
            return _error(f"invalid JSON: {exc}")
        if values is None:
            values = []
        if not isinstance(values, list):
            kind = gocompat.type_name(values)
            return _error(
                f"invalid JSON: json: cannot unmarshal {kind} into Go value of type []client.Job"
            )
        # Go decodes the whole array first: one badly typed field refuses the whole batch.
        decoded: list[dict[str, Any]] = []
        try:
            for value in values:
                if value is not None and not isinstance(value, dict):
                    kind = gocompat.type_name(value)
                    raise JobRejected(
                        f"invalid JSON: json: cannot unmarshal {kind} into Go value of type "
                        "client.Job"
                    )
                decoded.append(decode_fields(value or {}))
        except JobRejected as exc:
            return _error(str(exc))
        rejected: dict[str, str] = {}
        for job in decoded:
            try:
                validate(job)
            except JobRejected as exc:
                rejected[job.get("jid") or ""] = str(exc)
                continue
            try:
                self.core.push(job)
            except JobRefused as exc:
                rejected[job.get("jid") or ""] = exc.reason
        if not rejected:
            return Outcome(encode_bulk(b"{}"))
        body = json.dumps(dict(sorted(rejected.items())), separators=(",", ":"), ensure_ascii=False)
        return Outcome(encode_bulk(body))

    def _fetch(self, arg: str | None) -> Outcome:
        queues = [q for q in (arg or "").split(" ") if q] if arg is not None else []
        if not queues:
            return _error("must call fetch with at least one queue")
        worker = self.core.workers.get(self.wid) if self.wid else None
        if (
            worker is not None
            and worker.state != "running"
            and worker.first_connection == self.conn_id
        ):
            # Faktory makes a quiet or terminating worker wait out the FETCH for nothing.
            self.fetch_queues = queues
            self.quiet_fetch = True
            return Outcome(None, WAIT)
        res = self.core.fetch(queues, self.wid)
        if res is not None:
            return Outcome(encode_bulk(res.data))
        self.fetch_queues = queues
        self.quiet_fetch = False
        return Outcome(None, WAIT)

    def _ack(self, arg: str | None) -> Outcome:
        if arg is not None:
            plain = _PLAIN_ACK.fullmatch(arg)
            if plain is not None:
                # What every client sends; the full parse below gives the same result.
                self.core.ack(plain[1])
                return _CONTINUE_OK
        doc = _json_object(arg)
        if (
            doc is None
            or "jid" not in doc
            or not all(isinstance(v, str) or v is None for v in doc.values())
        ):
            return _error(f"invalid ACK {arg}")
        self.core.ack(doc["jid"] or "")
        return _CONTINUE_OK

    def _fail(self, arg: str | None) -> Outcome:
        doc = _json_object(arg)
        if doc is None:
            return _error(f"invalid FAIL {arg}")
        fields: dict[str, Any] = {}
        for name in ("jid", "errtype", "message"):
            value = doc.get(name)
            if not _str_or_null(value):
                return _error(f"invalid FAIL {arg}")
            fields[name] = value or ""
        backtrace = doc.get("backtrace")
        if backtrace is not None and not (
            isinstance(backtrace, list) and all(map(_str_or_null, backtrace))
        ):
            return _error(f"invalid FAIL {arg}")
        lines = [x or "" for x in backtrace] if backtrace else None
        try:
            self.core.fail(fields["jid"], fields["errtype"], fields["message"], lines)
        except CoreError as exc:
            return _error(str(exc))
        return _CONTINUE_OK

    def _beat(self, arg: str | None) -> Outcome:
        doc = _json_object(arg)
        if doc is None:
            return _error(f"invalid BEAT {arg}")
        wid = doc.get("wid")
        state = doc.get("current_state")
        rss = doc.get("rss_kb")
        if not (_str_or_null(wid) and _str_or_null(state) and _int_or_null(rss)):
            return _error(f"invalid BEAT {arg}")
        try:
            worker = self.core.beat(wid or "", state or "", rss or 0)
        except CoreError as exc:
            return _error(str(exc))
        if worker.state == "running":
            return _CONTINUE_OK
        return Outcome(encode_bulk(b'{"state":"%s"}' % worker.state.encode()))

    def _info(self, arg: str | None) -> Outcome:
        body = gocompat.dumps(self.core.info())
        return Outcome(encode_bulk(body))

    def _flush(self, arg: str | None) -> Outcome:
        self.core.flush()
        return _CONTINUE_OK

    def _mutate(self, arg: str | None) -> Outcome:
        # Faktory splits the whole line on spaces and wants exactly "MUTATE {json}"; its
        # JSON errors come back bare (no "invalid JSON:" prefix, unlike PUSH).
        if arg is None or " " in arg:
            return _error("invalid format")
        try:
            doc = gocompat.loads(arg)
        except gocompat.GoJSONError as exc:
            return _error(str(exc))
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            kind = gocompat.type_name(doc)
            return _error(f"json: cannot unmarshal {kind} into Go value of type client.Operation")
        cmd = doc.get("cmd")
        target = doc.get("target")
        flt = doc.get("filter")
        problem = _operation_type_error(cmd, target, flt)
        if problem:
            return _error(problem)
        try:
            self.core.mutate(cmd or "", target or "", flt)
        except CoreError as exc:
            return _error(str(exc))
        return _CONTINUE_OK

    def _queue(self, arg: str | None) -> Outcome:
        parts = (arg or "").split(" ") if arg is not None else []
        if len(parts) < 2:
            raise _MissingArgument
        sub, names = parts[0], [n for n in parts[1:] if n]
        if sub == "PAUSE":
            self.core.pause(names)
        elif sub == "RESUME":
            self.core.resume(names)
        elif sub == "REMOVE":
            self.core.remove(names)
        elif sub == "LATENCY":
            if "*" in names:
                return _error("QUEUE LATENCY does not support wildcards")
            latencies = self.core.latency(names)
            body = gocompat.dumps({name: float(v) for name, v in sorted(latencies.items())})
            return Outcome(encode_bulk(body))
        else:
            return _error(f"no such QUEUE subcommand: {sub}")
        return _CONTINUE_OK

    def _kaffi(self, arg: str | None) -> Outcome:
        """kaffi's own admin verb (no Faktory client sends it; real Faktory answers
        ``unknown command KAFFI``): ``KAFFI QUIET wid``, ``KAFFI TERMINATE wid`` ask a worker
        to change state at its next BEAT; ``KAFFI WORKERS`` lists the known workers;
        ``KAFFI PAUSED`` lists the paused queues (no Faktory command says which are)."""
        sub, _, rest = (arg or "").partition(" ")
        sub = sub.upper()
        if sub in ("QUIET", "TERMINATE"):
            wid = rest.strip()
            if not wid:
                return _error(f"KAFFI {sub} needs a worker id")
            if not self.core.signal_worker(wid, sub.lower()):
                return _error(f"unknown worker {wid}")
            return _CONTINUE_OK
        if sub == "WORKERS":
            workers = [w.to_dict() for w in self.core.workers.values()]
            return Outcome(encode_bulk(json.dumps(workers, separators=(",", ":"))))
        if sub == "PAUSED":
            return Outcome(encode_bulk(json.dumps(self.core.paused(), separators=(",", ":"))))
        return _error(f"no such KAFFI subcommand: {sub}")

    def _batch(self, arg: str | None) -> Outcome:
        """``BATCH NEW {json}``, ``BATCH OPEN|COMMIT|STATUS <bid>`` (Enterprise mode)."""
        ent = self.core.enterprise
        if ent is None:
            return _error("batch subsystem is only available in Faktory Enterprise")
        sub, _, rest = (arg or "").partition(" ")
        if not sub:
            return _error("BATCH needs a subcommand: NEW, OPEN, COMMIT or STATUS")
        try:
            reply = ent.batches.command(sub, rest, self.core.clock.now())
        except BatchError as exc:
            return _error(str(exc))
        return _CONTINUE_OK if reply is None else Outcome(encode_bulk(reply))

    def _track(self, arg: str | None) -> Outcome:
        ent = self.core.enterprise
        if ent is None:
            return _error("tracking subsystem is only available in Faktory Enterprise")
        sub, _, rest = (arg or "").partition(" ")
        if sub == "GET":
            jid = rest.strip()
            if not jid:
                return _error("TRACK GET needs a jid")
            return Outcome(encode_bulk(gocompat.dumps(ent.track_get(jid))))
        if sub == "SET":
            return self._track_set(ent, rest)
        return _error(f"no such TRACK subcommand: {sub}")

    def _track_set(self, ent: Enterprise, arg: str) -> Outcome:
        """``TRACK SET {"jid":...,"percent":...,"desc":...,"reserve_until":...}``."""
        try:
            doc = gocompat.loads(arg)
        except gocompat.GoJSONError as exc:
            return _error(f"invalid JSON: {exc}")
        if not isinstance(doc, dict):
            return _error("TRACK SET needs a JSON object")
        jid, percent, desc = doc.get("jid"), doc.get("percent"), doc.get("desc")
        until = doc.get("reserve_until")
        if not isinstance(jid, str) or not jid:
            return _error("TRACK SET needs a jid")
        if not _int_or_null(percent) or not _str_or_null(desc) or not _str_or_null(until):
            return _error(f"invalid TRACK SET {arg}")
        now = self.core.clock.now()
        if until:
            try:
                when = gocompat.parse_rfc3339(until).timestamp()
            except ValueError:
                return _error(f"invalid reserve_until {until}")
            self.core.extend_reservation(jid, when)
        ent.track_set(jid, percent, desc, now)
        return _CONTINUE_OK


#: ``{"jid":"..."}`` with a jid JSON reads as it is written (no escapes, no control
#: characters): the ACK every client sends, taken without the Go-compatible JSON parse.
_PLAIN_ACK = re.compile(r'\{"jid":"([^"\\\x00-\x1f]*)"\}')


class _MissingArgument(Exception):
    """A verb that needs an argument came alone: Faktory 1.10.0 answers ``internal error``."""


def _json_object(arg: str | None) -> dict[str, Any] | None:
    """The argument of ACK, FAIL or BEAT as a JSON object (``null`` reads as ``{}``, as Go
    decodes it into an empty struct), or None when it is not one; a missing argument is
    Faktory's ``internal error``."""
    if arg is None:
        raise _MissingArgument
    try:
        doc = gocompat.loads(arg)
    except gocompat.GoJSONError:
        return None
    if doc is None:
        return {}
    return doc if isinstance(doc, dict) else None


def _operation_type_error(cmd: Any, target: Any, flt: Any) -> str | None:
    for name, value in (("cmd", cmd), ("target", target)):
        if value is not None and not isinstance(value, str):
            kind = gocompat.type_name(value)
            return gocompat.unmarshal_type_error(kind, "Operation", name, "string")
    if flt is None:
        return None
    if not isinstance(flt, dict):
        kind = gocompat.type_name(flt)
        return gocompat.unmarshal_type_error(kind, "Operation", "filter", "client.JobFilter")
    for name in ("jobtype", "regexp"):
        value = flt.get(name)
        if value is not None and not isinstance(value, str):
            kind = gocompat.type_name(value)
            return gocompat.unmarshal_type_error(kind, "JobFilter", "filter." + name, "string")
    jids = flt.get("jids")
    if jids is None:
        return None
    if not isinstance(jids, list):
        kind = gocompat.type_name(jids)
        return gocompat.unmarshal_type_error(kind, "JobFilter", "filter.jids", "[]string")
    for jid in jids:
        # Go names the element that does not fit, and the element's type.
        if jid is not None and not isinstance(jid, str):
            kind = gocompat.type_name(jid)
            return gocompat.unmarshal_type_error(kind, "JobFilter", "filter.jids", "string")
    return None


_HANDLERS = {
    "END": Session._end,
    "PUSH": Session._push,
    "PUSHB": Session._pushb,
    "FETCH": Session._fetch,
    "ACK": Session._ack,
    "FAIL": Session._fail,
    "BEAT": Session._beat,
    "INFO": Session._info,
    "FLUSH": Session._flush,
    "MUTATE": Session._mutate,
    "QUEUE": Session._queue,
    "BATCH": Session._batch,
    "TRACK": Session._track,
    "KAFFI": Session._kaffi,
}
