"""Logging for workers: the per-job context, the one line per job, text and JSON output.

- While a job runs, every log record (from kaffi, from the task, from any library it
  calls, in the event loop or in a job thread) carries ``jid`` and ``jobtype``
  attributes. A record factory adds them from a context variable, so it costs one
  ``ContextVar.get`` per record and nothing per job.
- Integrations can add fields of their own to those records and to the job line through
  :data:`job_log_fields` (kaffi's tracing puts ``trace_id`` and ``span_id`` there): JSON
  shows them as keys, text inside the ``[jobtype jid ...]`` brackets as ``key=value``.
- After each job the worker logs one line on the ``kaffi.job`` logger with ``jid``,
  ``jobtype``, ``duration`` (seconds) and ``outcome`` (``ack`` or ``fail``). When that
  level is off nothing is formatted; when the handler :func:`configure_logging`
  installed is the only code that would see the line, that handler writes it to its
  stream as the record would have been written, without building the record (see
  :func:`log_job_done` for what that saves).
- :func:`configure_logging` sets up the root logger for the command line: ``text`` for
  people, ``json`` (one object per line) for machines.

This module must not import the worker: the worker imports it. Its name is not
``logging`` so that it never hides the standard library's module.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import IO, Any

__all__ = [
    "JOB_LOGGER",
    "JsonFormatter",
    "KaffiStreamHandler",
    "TextFormatter",
    "configure_logging",
    "install_record_factory",
    "job_context",
    "job_log_fields",
    "log_job_done",
]

#: ``(jid, jobtype)`` of the job running in this context, or None.
job_context: ContextVar[tuple[str, str] | None] = ContextVar("kaffi_job_context", default=None)

#: Extra fields (name -> text) for the log records of the job running in this context and
#: for its job line; None for none. Read only while :data:`job_context` is set, so a value
#: left behind by the last job never reaches the worker's own lines between jobs. Whoever
#: sets it does so in the job's own context before the job runs (an ``async`` worker
#: middleware: the job line is written in that context once the chain returns), and sets
#: it again, or to None, for every job.
job_log_fields: ContextVar[Mapping[str, str] | None] = ContextVar(
    "kaffi_job_log_fields", default=None
)
#: The record attribute naming the fields :data:`job_log_fields` added to it.
_FIELDS_ATTR = "kaffi_fields"

JOB_LOGGER = logging.getLogger("kaffi.job")

_factory_lock = threading.Lock()
_factory_installed = False
#: The record factory install_record_factory() set (a list: assigned in a function).
_kaffi_factory: list[Callable[..., logging.LogRecord] | None] = [None]

#: LogRecord attributes that are not "extra" fields a caller passed.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "jid",
    "jobtype",
    "job",
    "taskName",
    _FIELDS_ATTR,
}


def install_record_factory() -> None:
    """Give every log record ``jid`` and ``jobtype`` (None outside a job). Idempotent."""
    global _factory_installed
    with _factory_lock:
        if _factory_installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            ctx = job_context.get()
            if ctx is None:
                record.jid = record.jobtype = None
            else:
                record.jid, record.jobtype = ctx
                extra = job_log_fields.get()
                if extra:
                    _add_fields(record.__dict__, extra)
            return record

        logging.setLogRecordFactory(factory)
        _kaffi_factory[0] = factory
        _factory_installed = True


def count_jobs(number: int) -> str:
    """``1 job``, ``2 jobs``: a count of jobs as log lines say it."""
    return f"{number} job" if number == 1 else f"{number} jobs"


def _add_fields(fields: dict[str, Any], extra: Mapping[str, str]) -> None:
    """Put :data:`job_log_fields`' ``extra`` on a record (its ``__dict__``), never over an
    attribute the record already has."""
    added = tuple(key for key in extra if key not in fields)
    for key in added:
        fields[key] = extra[key]
    fields[_FIELDS_ATTR] = added


def _field_text(fields: Mapping[str, Any], names: tuple[str, ...]) -> str:
    """`` key=value`` for each name, as the text formats show them."""
    return "".join(f" {name}={fields[name]}" for name in names)


def _msecs(created: float) -> int:
    """The milliseconds of ``created`` as a record's ``msecs`` shows them."""
    return int((created - int(created)) * 1000)


def log_job_done(
    jid: str,
    jobtype: str,
    duration: float,
    outcome: str,
    error: BaseException | None = None,
    shown: TracebackType | None = None,
) -> None:
    """The one line per job. Failures are warnings and carry the exception with the
    traceback ``shown`` (the user's frames; none: the line alone).

    A success line is INFO. When the only handler that would see it is the one
    :func:`configure_logging` installed (what ``kaffi worker`` runs with), that handler
    writes the line itself, formatted as its formatter would format the record, without a
    :class:`logging.LogRecord` (:func:`_sole_kaffi_handler` says when that is exact).
    Measured with timeit (50,000 lines to a StringIO, text format, this project's 2-core
    machine): 2.2 µs per line that way, against 7.8 µs for ``JOB_LOGGER.info(...)`` and
    6.4 µs for ``makeRecord`` + ``handle``; a no-op job costs the worker about 20 µs in
    all, so the record would add a third. Otherwise the record is built with the public
    ``Logger.makeRecord`` (no stack walk to find the caller, which is always this
    function) and handled as usual. Either way it costs nothing when the ``kaffi.job``
    logger is above INFO.
    """
    if error is None:
        if JOB_LOGGER.isEnabledFor(logging.INFO):
            handler = _sole_kaffi_handler()
            if handler is None or not handler.write_done(jid, jobtype, duration, outcome):
                JOB_LOGGER.handle(_done_record(jid, jobtype, duration, outcome))
    elif JOB_LOGGER.isEnabledFor(logging.WARNING):
        JOB_LOGGER.warning(
            "done%s in %.3fs: %s (%s: %s)",
            _named(jid, jobtype),
            duration,
            outcome,
            type(error).__name__,
            error,
            exc_info=(type(error), error, shown) if shown is not None else None,
            extra={
                "duration": round(duration, 6),
                "outcome": outcome,
                "errtype": type(error).__name__,
            },
        )


_DONE_MESSAGE = "done%s in %.3fs: %s"


def _named(jid: str, jobtype: str) -> str:
    """`` jobtype jid`` for a job line, or nothing when the record carries them already
    (the line is logged in that job's context, as the worker does): the text format
    shows them once, in its ``[jobtype jid]`` prefix."""
    return "" if job_context.get() == (jid, jobtype) else f" {jobtype} {jid}"


def _done_record(jid: str, jobtype: str, duration: float, outcome: str) -> logging.LogRecord:
    return JOB_LOGGER.makeRecord(
        JOB_LOGGER.name,
        logging.INFO,
        __file__,
        0,
        _DONE_MESSAGE,
        (_named(jid, jobtype), duration, outcome),
        None,
        "log_job_done",
        {"duration": round(duration, 6), "outcome": outcome},
    )


def _sole_kaffi_handler() -> KaffiStreamHandler | None:
    """The handler :func:`configure_logging` installed, when handling a ``kaffi.job``
    record at INFO would reach that handler and no other code at all: kaffi's record
    factory is the one in place (a user's factory sees every record), no logger on the
    way and no handler has a filter, and the handler takes INFO (its formatter is checked
    by :meth:`KaffiStreamHandler.write_done`). None otherwise, and for no handler at all
    (``lastResort``)."""
    if logging.getLogRecordFactory() is not _kaffi_factory[0] or JOB_LOGGER.disabled:
        return None
    found: KaffiStreamHandler | None = None
    logger: logging.Logger | None = JOB_LOGGER
    while logger is not None:
        if logger.filters:
            return None
        for handler in logger.handlers:
            if (
                found is not None
                or type(handler) is not KaffiStreamHandler
                or handler.filters
                or handler.level > logging.INFO
            ):
                return None
            found = handler
        if not logger.propagate:
            break
        logger = logger.parent
    return found


class _SecondCache:
    """A timestamp's text up to the second, formatted once per second rather than per
    record (``time.strftime`` is a large share of a short log line's cost)."""

    __slots__ = ("_format", "_second", "_text", "_utc")

    def __init__(self, fmt: str, *, utc: bool) -> None:
        self._format = fmt
        self._utc = utc
        self._second = -1
        self._text = ""

    def text(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            parts = time.gmtime(second) if self._utc else time.localtime(second)
            self._text = time.strftime(self._format, parts)
            self._second = second
        return self._text


class TextFormatter(logging.Formatter):
    """``2026-01-01 12:00:00,000 INFO kaffi.job [jobtype jid] message``.

    The layout is fixed, so it is built directly rather than through a ``%``-style
    template; the output is what ``logging.Formatter`` would produce with
    ``"%(asctime)s %(levelname)s %(name)s%(job)s %(message)s"``.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job)s %(message)s")
        self._seconds = _SecondCache("%Y-%m-%d %H:%M:%S", utc=False)
        #: (second * 1000 + msecs, asctime) of the last job line: the lines of one
        #: millisecond share their time text.
        self._done_time: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return f"{self._seconds.text(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record)
        jid = getattr(record, "jid", None)
        names = getattr(record, _FIELDS_ATTR, ())
        fields = _field_text(record.__dict__, names) if names else ""
        job = record.job = f" [{getattr(record, 'jobtype', None)} {jid}{fields}]" if jid else ""
        text = f"{record.asctime} {record.levelname} {record.name}{job} {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return text

    def format_done(
        self, created: float, jid: str, jobtype: str, duration: float, outcome: str
    ) -> str:
        """What :meth:`format` gives for the record of a job line (:func:`log_job_done`)
        created at ``created`` in the current job context."""
        second = int(created)
        msecs = int((created - second) * 1000)  # what _msecs() gives, inlined
        key = second * 1000 + msecs
        cached_key, asctime = self._done_time
        if key != cached_key:
            asctime = f"{self._seconds.text(created)},{msecs:03d}"
            self._done_time = (key, asctime)
        ctx = job_context.get()
        if ctx is None or not ctx[0]:
            job = ""
        else:
            extra = job_log_fields.get()
            fields = _field_text(extra, tuple(extra)) if extra else ""
            job = f" [{ctx[1]} {ctx[0]}{fields}]"
        named = "" if ctx == (jid, jobtype) else f" {jobtype} {jid}"
        return (
            f"{asctime} {logging.getLevelName(logging.INFO)} {JOB_LOGGER.name}{job}"
            f" done{named} in {duration:.3f}s: {outcome}"
        )


_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, jid, jobtype, the extra
    fields the caller passed (``duration``, ``outcome`` ...) and ``exc`` when there is one."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondCache("%Y-%m-%dT%H:%M:%S", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__
        doc: dict[str, Any] = {
            "time": f"{self._seconds.text(record.created)}.{int(record.msecs):03d}+00:00",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        jid = fields.get("jid")
        if jid:
            doc["jid"] = jid
            doc["jobtype"] = fields.get("jobtype")
        extra = fields.keys() - _STANDARD_ATTRS
        if extra:
            for key in sorted(extra):
                if key not in doc:
                    doc[key] = fields[key]
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return _JSON.encode(doc)

    def format_done(
        self, created: float, jid: str, jobtype: str, duration: float, outcome: str
    ) -> str:
        """What :meth:`format` gives for the record of a job line (:func:`log_job_done`)
        created at ``created`` in the current job context: its only extra fields are
        ``duration`` and ``outcome``, in that (sorted) order."""
        doc: dict[str, Any] = {
            "time": f"{self._seconds.text(created)}.{_msecs(created):03d}+00:00",
            "level": logging.getLevelName(logging.INFO).lower(),
            "logger": JOB_LOGGER.name,
            "message": f"done{_named(jid, jobtype)} in {duration:.3f}s: {outcome}",
            "pid": os.getpid() if logging.logProcesses else None,
        }
        ctx = job_context.get()
        extra = None
        if ctx is not None and ctx[0]:
            doc["jid"], doc["jobtype"] = ctx
            extra = job_log_fields.get()
        doc["duration"] = round(duration, 6)
        doc["outcome"] = outcome
        if extra:
            # format() sorts a record's extra fields: do the same with these and the two.
            for key in extra:
                if key not in doc:
                    doc[key] = extra[key]
            ordered = {k: doc[k] for k in ("time", "level", "logger", "message", "pid")}
            ordered.update((k, doc[k]) for k in ("jid", "jobtype") if k in doc)
            ordered.update((k, doc[k]) for k in sorted(doc.keys() - ordered.keys()))
            doc = ordered
        return _JSON.encode(doc)


class KaffiStreamHandler(logging.Handler):
    """The handler :func:`configure_logging` installs: writes each record, formatted, to
    a text stream (as :class:`logging.StreamHandler` does), and can also write a job line
    without a record (see :func:`log_job_done`).

    It owns its stream rather than extending ``StreamHandler``, so the job line is
    written through this class's own attributes and the public ``Handler`` API
    (``acquire``/``release``, ``handleError``) only.
    """

    terminator = "\n"

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream: IO[str] = sys.stderr if stream is None else stream

    def setStream(self, stream: IO[str]) -> IO[str] | None:
        """Write to ``stream`` from now on; return the previous stream (None if it is
        the same one), as ``StreamHandler.setStream`` does."""
        if stream is self.stream:
            return None
        self.acquire()
        try:
            self.flush()
            previous, self.stream = self.stream, stream
        finally:
            self.release()
        return previous

    def flush(self) -> None:
        """Flush the stream, when it can be flushed."""
        self.acquire()
        try:
            if self.stream and hasattr(self.stream, "flush"):
                self.stream.flush()
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` and write it, followed by :attr:`terminator`."""
        try:
            self._write(self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _write(self, text: str) -> None:
        stream = self.stream
        stream.write(text + self.terminator)
        if stream and hasattr(stream, "flush"):
            stream.flush()

    def write_done(self, jid: str, jobtype: str, duration: float, outcome: str) -> bool:
        """Write the job line as :meth:`handle` would for its record, and say True; False
        (nothing written) when this handler's formatter is not one of kaffi's own."""
        formatter = self.formatter
        if type(formatter) is not TextFormatter and type(formatter) is not JsonFormatter:
            return False
        created = time.time()
        # Under the handler's lock, as handle() takes it around emit().
        self.acquire()
        try:
            self._write(formatter.format_done(created, jid, jobtype, duration, outcome))
        except RecursionError:
            raise
        except Exception:
            self.handleError(_done_record(jid, jobtype, duration, outcome))
        finally:
            self.release()
        return True

    def __repr__(self) -> str:
        name = getattr(self.stream, "name", "")
        shown = f"{name} " if name else ""
        return f"<{type(self).__name__} {shown}({logging.getLevelName(self.level)})>"


def configure_logging(
    level: str | int = "INFO", fmt: str = "text", stream: IO[str] | None = None
) -> None:
    """Set up the root logger for a worker process (command line use).

    Replaces handlers this function installed before, leaves others alone.
    """
    if fmt not in ("text", "json"):
        from kaffi.errors import ConfigurationError

        raise ConfigurationError(f"log format must be 'text' or 'json', got {fmt!r}")
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            from kaffi.errors import ConfigurationError

            raise ConfigurationError(
                f"unknown log level {level!r}: use debug, info, warning, error or critical"
            )
        level = resolved
    install_record_factory()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_kaffi", False):
            root.removeHandler(handler)
    handler = KaffiStreamHandler(stream if stream is not None else sys.stderr)
    handler._kaffi = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
