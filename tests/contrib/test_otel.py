"""Tracing across a real push (this process) and a real worker (another process, whose
finished spans come back through a file), plus the link option, the log fields and
``App(tracing=True)``."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_span_id, format_trace_id

from kaffi import App, Client
from kaffi.contrib.otel import Tracing
from kaffi.worker.joblog import (
    JOB_LOGGER,
    JsonFormatter,
    TextFormatter,
    job_context,
    job_log_fields,
    log_job_done,
)
from tests.contrib.helpers import REPO_ROOT
from tests.support import WAIT, running, wait_until


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _producer_app(url: str, provider: TracerProvider) -> tuple[App, Any, Any]:
    """The producer's side of tests.contrib.traced_app: same jobtypes and queue."""
    app = App(url)
    Tracing(tracer_provider=provider).install(app)

    @app.task(queue="traced")
    def greet(name: str) -> str:
        return name

    @app.task(queue="traced")
    def explode() -> None:
        """Runs in the worker."""

    return app, greet, explode


@pytest.mark.slow
def test_trace_crosses_the_queue_into_another_process(faktory_server: Any, tmp_path: Path) -> None:
    provider, exporter = _provider()
    app, greet, explode = _producer_app(faktory_server.url, provider)
    try:
        ada = greet.delay("Ada")
        failing = explode.delay()
    finally:
        app.close()
    with Client(faktory_server.url) as client:  # another language's job: no context
        bare = client.push({"jobtype": "greet", "args": ["bare"], "queue": "traced"})

    sent = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}  # type: ignore[index]
    assert set(sent) == {ada, failing}
    for jid, span in sent.items():
        assert span.kind is SpanKind.PRODUCER
        assert span.parent is None
        assert dict(span.attributes or {}) == {
            "messaging.system": "faktory",
            "messaging.destination.name": "traced",
            "messaging.message.id": jid,
            "messaging.operation.type": "send",
            "messaging.faktory.jobtype": span.name.removeprefix("send "),
        }
    assert sent[ada].name == "send greet"

    spans_file = tmp_path / "spans.jsonl"
    env = {k: v for k, v in __import__("os").environ.items() if k != "FAKTORY_PROVIDER"}
    env.update(FAKTORY_URL=faktory_server.url, KAFFI_TEST_SPANS=str(spans_file))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kaffi",
            "worker",
            "tests.contrib.traced_app:app",
            "--queues",
            "traced",
            "--burst",
            "--log-format",
            "json",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT * 2,
    )
    assert result.returncode == 0, result.stderr
    processed = [json.loads(line) for line in spans_file.read_text().splitlines()]
    by_jid = {s["attributes"]["messaging.message.id"]: s for s in processed}
    assert set(by_jid) == {ada, failing, bare}

    def ids(span: ReadableSpan) -> tuple[str, str]:
        ctx = span.get_span_context()
        assert ctx is not None
        return "0x" + format_trace_id(ctx.trace_id), "0x" + format_span_id(ctx.span_id)

    for jid in (ada, failing):
        consumer = by_jid[jid]
        trace_id, span_id = ids(sent[jid])
        assert consumer["kind"] == "SpanKind.CONSUMER"
        assert consumer["context"]["trace_id"] == trace_id
        assert consumer["parent_id"] == span_id
        assert consumer["attributes"] == {
            "messaging.system": "faktory",
            "messaging.destination.name": "traced",
            "messaging.message.id": jid,
            "messaging.operation.type": "process",
            "messaging.faktory.jobtype": consumer["name"].removeprefix("process "),
            "messaging.faktory.retry_count": 0,
        }
    assert by_jid[ada]["name"] == "process greet"
    assert by_jid[ada]["status"]["status_code"] == "UNSET"
    failed = by_jid[failing]
    assert failed["status"]["status_code"] == "ERROR"
    assert "ValueError" in failed["status"]["description"]
    (event,) = failed["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "exploded on purpose"
    # No context in the job: a root span of a trace of its own.
    root = by_jid[bare]
    assert root["parent_id"] is None
    assert root["context"]["trace_id"] not in {ids(s)[0] for s in sent.values()}

    # The job's log lines carry its span's ids.
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    for jid in (ada, failing, bare):
        consumer = by_jid[jid]
        mine = [line for line in lines if line.get("jid") == jid]
        assert mine, f"no log line for {jid}"
        for line in mine:
            assert "0x" + line["trace_id"] == consumer["context"]["trace_id"]
            assert "0x" + line["span_id"] == consumer["context"]["span_id"]
    assert any(line["message"] == "greeting Ada" for line in lines if line.get("jid") == ada)
    done = [line for line in lines if line["logger"] == "kaffi.job"]
    assert len(done) == 3
    # The worker's own lines, outside any job, carry none.
    assert all("trace_id" not in line for line in lines if "jid" not in line)


def test_link_instead_of_parent(faktory_server: Any) -> None:
    provider, exporter = _provider()
    app = App(faktory_server.url)
    Tracing(tracer_provider=provider, link=True).install(app)
    ran: list[str] = []

    @app.task
    async def linked(x: int) -> None:
        ran.append(str(x))

    try:
        jid = linked.delay(1)
        worker = app.worker(burst=True)
        with running(worker):
            wait_until(lambda: worker.state == "stopped", "the burst worker to stop")
    finally:
        app.close()
    assert ran == ["1"]
    spans = {s.kind: s for s in exporter.get_finished_spans()}
    producer, consumer = spans[SpanKind.PRODUCER], spans[SpanKind.CONSUMER]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.message.id"] == jid
    assert consumer.parent is None
    assert consumer.context is not None
    assert producer.context is not None
    assert consumer.context.trace_id != producer.context.trace_id
    (link,) = consumer.links
    assert link.context.trace_id == producer.context.trace_id
    assert link.context.span_id == producer.context.span_id


def test_retry_count_and_existing_custom(faktory_server: Any) -> None:
    provider, exporter = _provider()
    app = App(faktory_server.url)
    Tracing(tracer_provider=provider).install(app)

    @app.task(custom={"tenant": "acme"})
    def tenant_job() -> None:
        """Runs."""

    try:
        jid = tenant_job.delay()
        assert jid is not None
        with Client(faktory_server.url, wid="otel-retry") as client:
            job = client.fetch("default")
            assert job is not None
            assert job.custom is not None
            assert job.custom["tenant"] == "acme"
            assert job.custom["traceparent"].startswith("00-")
            client.fail(jid, RuntimeError("first try"))
        faktory_server.advance_clock(3600)
        worker = app.worker(burst=True)
        with running(worker):
            wait_until(lambda: worker.state == "stopped", "the burst worker to stop")
    finally:
        app.close()
    (consumer,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert consumer.attributes is not None
    assert consumer.attributes["messaging.faktory.retry_count"] == 1
    assert consumer.status.status_code is StatusCode.UNSET


def test_a_context_that_is_not_text_still_gets_a_root_span(faktory_server: Any) -> None:
    # Other clients put what they like in custom: a traceparent or baggage that is not a
    # string made the propagator raise inside the middleware, so the job failed on every
    # retry without ever running. Such a job runs, in a root span, like one without any.
    provider, exporter = _provider()
    app = App(faktory_server.url)
    Tracing(tracer_provider=provider).install(app)
    ran: list[int] = []

    @app.task(queue="odd")
    def odd(x: int) -> None:
        ran.append(x)

    try:
        with Client(faktory_server.url) as client:
            for custom in ({"traceparent": 5}, {"baggage": 7}, {"tracestate": ["x"]}):
                client.push(
                    {"jobtype": "odd", "args": [len(ran)], "queue": "odd", "custom": custom}
                )
        worker = app.worker(queues=["odd"], burst=True)
        with running(worker):
            wait_until(lambda: worker.state == "stopped", "the burst worker to stop")
    finally:
        app.close()
    assert sorted(ran) == [0, 0, 0]
    consumers = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]
    assert len(consumers) == 3
    for span in consumers:
        assert span.parent is None
        assert span.status.status_code is StatusCode.UNSET


def test_app_tracing_true_installs_both_middleware() -> None:
    app = App(tracing=True)
    assert len(app.push_middleware) == 1
    assert len(app.middleware) == 1
    tracing = getattr(app.push_middleware[0], "__self__", None)
    assert isinstance(tracing, Tracing)
    tracing.install(app)  # once only
    assert (len(app.push_middleware), len(app.middleware)) == (1, 1)


# -- the log fields hook ----------------------------------------------------------------------


@pytest.mark.parametrize("formatter", [TextFormatter(), JsonFormatter()], ids=["text", "json"])
def test_job_line_with_fields_matches_the_record(formatter: logging.Formatter) -> None:
    """The job line written without a record equals the record's formatting, fields and all."""
    from kaffi.worker.joblog import _done_record, install_record_factory

    install_record_factory()
    fields = {"trace_id": "a" * 32, "span_id": "b" * 16}
    token = job_context.set(("jid-1", "greet"))
    fields_token = job_log_fields.set(fields)
    try:
        record = _done_record("jid-1", "greet", 0.25, "ack")
        direct = formatter.format_done(record.created, "jid-1", "greet", 0.25, "ack")  # type: ignore[attr-defined]
        assert direct == formatter.format(record)
        record_fields = dict(
            vars(logging.getLogRecordFactory()("x", logging.WARNING, __file__, 1, "m", (), None))
        )
    finally:
        job_log_fields.reset(fields_token)
        job_context.reset(token)
    assert "a" * 32 in direct
    assert "b" * 16 in direct
    if isinstance(formatter, TextFormatter):
        assert f"[greet jid-1 trace_id={'a' * 32} span_id={'b' * 16}]" in direct
    else:
        doc = json.loads(direct)
        assert (doc["trace_id"], doc["span_id"]) == ("a" * 32, "b" * 16)
    assert record_fields["trace_id"] == "a" * 32


def test_fields_never_reach_lines_outside_a_job() -> None:
    from kaffi.worker.joblog import install_record_factory

    install_record_factory()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    JOB_LOGGER.addHandler(handler)
    level = JOB_LOGGER.level
    JOB_LOGGER.setLevel(logging.INFO)
    fields_token = job_log_fields.set({"trace_id": "c" * 32})
    try:
        JOB_LOGGER.warning("between jobs")  # no job_context: a value left behind is ignored
        token = job_context.set(("jid-2", "x"))
        try:
            log_job_done("jid-2", "x", 0.1, "ack")
        finally:
            job_context.reset(token)
        token = job_context.set(("jid-3", "x"))
        job_log_fields.set(None)
        try:
            log_job_done("jid-3", "x", 0.1, "ack")  # the template must not keep jid-2's fields
        finally:
            job_context.reset(token)
    finally:
        job_log_fields.reset(fields_token)
        JOB_LOGGER.removeHandler(handler)
        JOB_LOGGER.setLevel(level)
    outside, inside, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside
    assert inside["trace_id"] == "c" * 32
    assert inside["jid"] == "jid-2"
    assert "trace_id" not in after
    assert after["jid"] == "jid-3"
