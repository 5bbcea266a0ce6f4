"""The App the tracing tests run in a real worker: ``tests.contrib.traced_app:app``.

``App(tracing=True)``. When ``KAFFI_TEST_SPANS`` names a file, this module sets up the
OpenTelemetry SDK so that every span the process finishes is written there as one JSON
line, as soon as it ends (the test reads them back after the worker exits).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from kaffi import App

log = logging.getLogger("tests.traced_app")


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file as one line of JSON."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            for span in spans:
                out.write(json.dumps(json.loads(span.to_json())) + "\n")
        return SpanExportResult.SUCCESS


_spans = os.environ.get("KAFFI_TEST_SPANS")
if _spans:
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(_spans)))
    trace.set_tracer_provider(_provider)

app = App(tracing=True)


@app.task(queue="traced")
def greet(name: str) -> str:
    """Succeeds, and logs a line inside its span."""
    log.warning("greeting %s", name)
    return f"hello {name}"


@app.task(queue="traced")
def explode() -> None:
    """Fails."""
    raise ValueError("exploded on purpose")
