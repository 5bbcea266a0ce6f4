"""Logging for workers: the per-job context, the one line per job, text and JSON output.

- While a job runs, every log record (from kaffi, from the task, from any library it
  calls, in the event loop or in a job thread) carries ``jid`` and ``jobtype``
  attributes. A record factory adds them from a context variable, so it costs one
  ``ContextVar.get`` per record and nothing per job.
- After each job the worker logs one line on the ``kaffi.job`` logger with ``jid``,
  ``jobtype``, ``duration`` (seconds) and ``outcome`` (``ack`` or ``fail``). When that
  level is off nothing is formatted.
- :func:`configure_logging` sets up the root logger for the command line: ``text`` for
  people, ``json`` (one object per line) for machines.

This module must not import the worker: the worker imports it.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import IO, Any

__all__ = [
    "JOB_LOGGER",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "install_record_factory",
    "job_context",
    "log_job_done",
]

#: ``(jid, jobtype)`` of the job running in this context, or None.
job_context: ContextVar[tuple[str, str] | None] = ContextVar("kaffi_job_context", default=None)

JOB_LOGGER = logging.getLogger("kaffi.job")

_factory_lock = threading.Lock()
_factory_installed = False

#: LogRecord attributes that are not "extra" fields a caller passed.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "jid",
    "jobtype",
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
            return record

        logging.setLogRecordFactory(factory)
        _factory_installed = True


def log_job_done(
    jid: str, jobtype: str, duration: float, outcome: str, error: BaseException | None = None
) -> None:
    """The one line per job. Failures are warnings and carry the exception.

    The record is built directly rather than through ``logger.info``: the caller is
    always this function, so the stack walk that finds it (a tenth of a line's cost on
    the per-job path) is skipped.
    """
    if error is None:
        if JOB_LOGGER.isEnabledFor(logging.INFO):
            JOB_LOGGER.handle(
                JOB_LOGGER.makeRecord(
                    JOB_LOGGER.name,
                    logging.INFO,
                    __file__,
                    0,
                    "done %s %s in %.3fs: %s",
                    (jobtype, jid, duration, outcome),
                    None,
                    "log_job_done",
                    {"duration": round(duration, 6), "outcome": outcome},
                )
            )
    elif JOB_LOGGER.isEnabledFor(logging.WARNING):
        JOB_LOGGER.warning(
            "done %s %s in %.3fs: %s (%s: %s)",
            jobtype,
            jid,
            duration,
            outcome,
            type(error).__name__,
            error,
            exc_info=error,
            extra={
                "duration": round(duration, 6),
                "outcome": outcome,
                "errtype": type(error).__name__,
            },
        )


class TextFormatter(logging.Formatter):
    """``2026-01-01 12:00:00,000 INFO kaffi.job [jobtype jid] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        jid = getattr(record, "jid", None)
        record.job = f" [{getattr(record, 'jobtype', None)} {jid}]" if jid else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, jid, jobtype, the extra
    fields the caller passed (``duration``, ``outcome`` ...) and ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        jid = getattr(record, "jid", None)
        if jid:
            doc["jid"] = jid
            doc["jobtype"] = getattr(record, "jobtype", None)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in doc and key != "job":
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        return json.dumps(doc, default=str, ensure_ascii=False)


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
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._kaffi = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
