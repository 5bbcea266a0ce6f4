"""OpenTelemetry tracing across push and worker (``pip install 'kaffi[otel]'``).

:class:`Tracing` is a pair of middleware:

- push side (:meth:`Tracing.push`, a plain push middleware): ``.delay()`` runs inside a
  PRODUCER span ``send <jobtype>``, and the span's context is written into the job's
  ``custom`` by the propagator (W3C ``traceparent`` and ``tracestate`` with the default
  one), so it travels with the job through Faktory, to any worker in any language;
- worker side (:meth:`Tracing.process`, an async worker middleware): the job runs inside
  a CONSUMER span ``process <jobtype>`` whose parent is the producer's span, or, with
  ``link=True``, a new trace with a link to it (for jobs that run long after they were
  sent, as Ruby's Sidekiq instrumentation offers). A job without a context (pushed by
  another client), or with one that is not text, gets a root span. An exception the job
  raises is recorded on the span and sets its status to error. While the span is open,
  the job's log records and its job line carry ``trace_id`` and ``span_id`` (through
  :data:`kaffi.worker.joblog.job_log_fields`).

Spans carry the messaging semantic conventions: ``messaging.system`` = ``faktory``,
``messaging.destination.name`` (the queue), ``messaging.message.id`` (the jid),
``messaging.operation.type`` (``send``/``process``), plus ``messaging.faktory.jobtype``
and ``messaging.faktory.retry_count`` (how many earlier runs of the job failed: 0 on its
first run).

``App(tracing=True)`` installs ``Tracing()``; ``Tracing(link=True).install(app)`` does the
same with options. Only ``opentelemetry-api`` is needed: with no SDK configured every span
is a no-op. This module never imports the worker and never configures exporters: that is
the application's choice (see docs/observability.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kaffi._version import __version__
from kaffi.contrib import require
from kaffi.worker.joblog import job_log_fields

require("opentelemetry.trace", "otel")

from opentelemetry import context as otel_context  # noqa: E402 - after the check naming the extra
from opentelemetry import propagate, trace  # noqa: E402
from opentelemetry.propagators.textmap import TextMapPropagator  # noqa: E402
from opentelemetry.trace import Link, SpanKind, format_span_id, format_trace_id  # noqa: E402

if TYPE_CHECKING:
    from kaffi.app import App
    from kaffi.app.execution import JobContext
    from kaffi.app.push import PushContext
    from kaffi.protocol.models import JobPayload

__all__ = ["MESSAGING_SYSTEM", "Tracing"]

#: ``messaging.system`` for every span kaffi makes.
MESSAGING_SYSTEM = "faktory"
#: The name of the tracer (the instrumentation scope).
TRACER_NAME = "kaffi"


def _attributes(job: JobPayload, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": job.queue,
        "messaging.message.id": job.jid,
        "messaging.operation.type": operation,
        "messaging.faktory.jobtype": job.jobtype,
    }
    if operation == "process":
        # Faktory's failure.retry_count is 0 after the first failure: runs failed before
        # this one are one more (and 0 on a first run, which has no failure block).
        attributes["messaging.faktory.retry_count"] = (
            job.failure.retry_count + 1 if job.failure is not None else 0
        )
    return attributes


class Tracing:
    """Traces jobs from ``.delay()`` to the worker; see the module docstring.

    ``tracer_provider``: where spans go (the global one, set by the application, when
    None); ``propagator``: how the context is written into and read from ``custom`` (the
    global one, W3C trace context and baggage by default); ``link``: the worker's span
    starts a new trace linked to the producer's instead of being its child.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        propagator: TextMapPropagator | None = None,
        link: bool = False,
    ) -> None:
        # A tracer from the global provider follows it when the application sets one later.
        self.tracer = trace.get_tracer(TRACER_NAME, __version__, tracer_provider=tracer_provider)
        self.propagator = propagator
        self.link = link

    def install(self, app: App) -> None:
        """Add :meth:`push` to ``app``'s push middleware and :meth:`process` to its worker
        middleware (each once)."""
        if self.push not in app.push_middleware:
            app.use_push(self.push)
        if self.process not in app.middleware:
            app.use(self.process)

    def _inject(self, carrier: dict[str, Any]) -> None:
        if self.propagator is not None:
            self.propagator.inject(carrier)
        else:
            propagate.inject(carrier)

    def _extract(self, custom: dict[str, Any]) -> otel_context.Context:
        # An empty Context, not the current one: a job without a context gets a root span.
        empty = otel_context.Context()
        # Only text: other clients put anything in custom, and the propagators raise on a
        # traceparent or baggage that is a number (the job would fail on every run).
        carrier = {key: value for key, value in custom.items() if isinstance(value, str)}
        if self.propagator is not None:
            return self.propagator.extract(carrier, context=empty)
        return propagate.extract(carrier, context=empty)

    def push(self, ctx: PushContext, next: Callable[[], None]) -> None:
        """Push middleware: a PRODUCER span around the push, its context into ``custom``."""
        job = ctx.job
        with self.tracer.start_as_current_span(
            f"send {job.jobtype}", kind=SpanKind.PRODUCER, attributes=_attributes(job, "send")
        ):
            carrier: dict[str, Any] = {}
            self._inject(carrier)
            if carrier:
                # Assigned whole: the payload model validates the new mapping.
                job.custom = {**(job.custom or {}), **carrier}
            next()

    async def process(self, ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
        """Worker middleware: the job inside a CONSUMER span, child of (or linked to) the
        producer's span; exceptions recorded, status set."""
        job = ctx.job
        custom = job.custom
        parent = self._extract(custom) if custom else otel_context.Context()
        links: list[Link] = []
        if self.link:
            sent = trace.get_current_span(parent).get_span_context()
            if sent.is_valid:
                links.append(Link(sent))
            parent = otel_context.Context()
        with self.tracer.start_as_current_span(
            f"process {job.jobtype}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=_attributes(job, "process"),
            links=links,
        ) as span:
            found = span.get_span_context()
            # Set for every job (None when tracing is off): the worker writes the job line
            # in this same context after the chain returns (see job_log_fields).
            job_log_fields.set(
                {
                    "trace_id": format_trace_id(found.trace_id),
                    "span_id": format_span_id(found.span_id),
                }
                if found.is_valid
                else None
            )
            await next()

    def __repr__(self) -> str:
        return f"<Tracing link={self.link}>"
