"""Prometheus metrics for kaffi workers and producers (``pip install 'kaffi[prometheus]'``).

- :class:`WorkerMetrics`: the worker's numbers. It is a
  :class:`~kaffi.worker.events.WorkerEvents` (``Worker(events=WorkerMetrics())``): the
  worker tells it about every job (jobs by outcome, duration, jobs in progress, latency
  from ``enqueued_at`` to start), empty FETCHes, its state and whether the server can be
  reached. Outside a worker (the testing modes), :meth:`WorkerMetrics.install` counts
  jobs with a worker middleware instead.
- :class:`PushMetrics`: a push middleware counting jobs pushed and push errors, for
  producers (a web app) that already serve a ``/metrics``.
- :func:`serve_metrics`: a ``/metrics`` HTTP server in a daemon thread
  (``kaffi worker --metrics HOST:PORT``).
- :class:`MultiprocessMetrics`: ``--processes N``: prometheus-client's multiprocess mode
  (``PROMETHEUS_MULTIPROC_DIR``), the directory emptied when the supervisor starts, a dead
  child's live gauges dropped, the children's numbers added up in the supervisor's
  ``/metrics``.

The names and labels (see :data:`WORKER_METRICS`) follow what Dramatiq's and
celery-exporter's users know. Metric objects are made on first use, in the process that
uses them: a :class:`WorkerMetrics` given to ``kaffi worker --processes N`` travels to
each child (by pickle) as its settings only.

This module never touches the worker's internals: it sees a worker through
:class:`~kaffi.worker.events.WorkerEvents` only (per job a method call, cheaper than a
middleware's coroutine), and jobs outside a worker through middleware.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kaffi._bases import Closing
from kaffi.contrib import require
from kaffi.contrib.addresses import format_address, parse_listen_address
from kaffi.errors import (
    ConfigurationError,
    KaffiError,
    PoolTimeout,
    ServerError,
    TransportError,
    ValidationError,
)
from kaffi.worker.events import WorkerEvents

require("prometheus_client", "prometheus")

from prometheus_client import (  # noqa: E402 - after the check that names the extra
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    multiprocess,
    start_http_server,
)

#: The kinds of collector WorkerMetrics makes.
_M = TypeVar("_M", Counter, Gauge, Histogram)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from kaffi.app import App
    from kaffi.app.execution import JobContext
    from kaffi.app.push import PushContext
    from kaffi.protocol.models import JobPayload
    from kaffi.worker.worker import Worker

__all__ = [
    "DEFAULT_BUCKETS",
    "LATENCY_BUCKETS",
    "WORKER_METRICS",
    "MetricsServer",
    "MultiprocessMetrics",
    "PushMetrics",
    "WorkerMetrics",
    "parse_buckets",
    "serve_metrics",
    "start_worker_metrics",
]

log = logging.getLogger("kaffi.metrics")

#: ``kaffi_job_duration_seconds`` buckets: from a 5 ms job to a five-minute one.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
#: ``kaffi_job_latency_seconds`` buckets: from a queue that keeps up to an hour behind.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

#: Every worker metric's name (as exposed) and what it says; docs/observability.md shows them.
WORKER_METRICS = {
    "kaffi_jobs_total": "Jobs finished, by jobtype, queue and outcome (ok, failed, dropped).",
    "kaffi_job_duration_seconds": "Time a job spent in the middleware chain and its function.",
    "kaffi_jobs_in_progress": "Jobs running now, by jobtype and queue.",
    "kaffi_job_latency_seconds": "Time from a job's enqueued_at to its start, by queue.",
    "kaffi_fetch_empty_total": "FETCHes that came back without a job.",
    "kaffi_worker_state": "1 for the worker's state (running, quiet, terminating, stopped).",
    "kaffi_server_reachable": "1 while the worker reaches its Faktory server, 0 during an outage.",
}

#: The values of ``kaffi_worker_state``'s ``state`` label, and the worker state of each.
STATES = {"running": "running", "quiet": "quiet", "terminate": "terminating", "stopped": "stopped"}

#: The Unix epoch, from which a job's ``enqueued_at`` is measured.
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_buckets(text: str) -> tuple[float, ...]:
    """Histogram buckets from ``"0.1,0.5,1,5"``: positive, increasing seconds; a bad list
    raises ConfigurationError naming the item."""
    buckets: list[float] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigurationError(
                f"histogram bucket {item!r} is not a number (buckets are seconds, like 0.1,1,10)"
            ) from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigurationError(
                f"histogram bucket {item!r} must be a positive number of seconds"
            )
        if buckets and value <= buckets[-1]:
            raise ConfigurationError(
                f"histogram buckets must increase: {item} comes after {buckets[-1]:g}"
            )
        buckets.append(value)
    if not buckets:
        raise ConfigurationError(f"no histogram buckets in {text!r} (like 0.1,1,10)")
    return tuple(buckets)


class _Tally:
    """One histogram's observations since the last publish (appending one costs a job
    0.04 µs, where ``Histogram.observe`` costs 1 µs). With both histograms counted this
    way, ``python -m bench --only metrics`` drains no-op jobs at 0.94-1.10x the rate
    without ``--metrics`` (medians of paired blocks, 2026-12-06)."""

    __slots__ = ("bounds", "values")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.values.append(value)

    def publish(self, child: Histogram, *, in_bulk: bool | None = None) -> None:
        """Add the observations to ``child`` (a labelled Histogram) and start over.

        prometheus-client has no public call that adds many observations at once. Where
        the child has the bucket and sum values ``observe`` itself adds to (``_buckets``,
        one per bound, and ``_sum``: the same from prometheus-client 0.4 to 0.26), the
        observations are counted per bucket here and added with one ``inc`` per bucket;
        otherwise (``in_bulk=False``, or a prometheus-client where those are gone) each
        goes through the public ``observe``. Both give the same exposition (tested).
        """
        values = self.values
        if not values:
            return
        self.values = []
        buckets = getattr(child, "_buckets", None) if in_bulk is not False else None
        total = getattr(child, "_sum", None)
        if isinstance(buckets, list) and len(buckets) == len(self.bounds) and hasattr(total, "inc"):
            assert total is not None
            counts = [0] * len(self.bounds)
            bounds = self.bounds
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1
            for bucket, count in zip(buckets, counts, strict=True):
                if count:
                    bucket.inc(count)
            total.inc(math.fsum(values))
        else:
            for value in values:
                child.observe(value)


class _Series:
    """One (jobtype, queue): its metric children, looked up once, and what happened since
    the last publish, in plain numbers (the per-job cost is a few additions)."""

    __slots__ = (
        "dropped",
        "dropped_child",
        "duration",
        "duration_child",
        "failed",
        "failed_child",
        "in_progress_child",
        "ok",
        "ok_child",
        "running",
    )

    def __init__(self, collectors: _Collectors, jobtype: str, queue: str) -> None:
        self.ok_child = collectors.jobs.labels(jobtype, queue, "ok")
        self.failed_child = collectors.jobs.labels(jobtype, queue, "failed")
        self.dropped_child = collectors.jobs.labels(jobtype, queue, "dropped")
        self.duration_child = collectors.duration.labels(jobtype, queue)
        self.in_progress_child = collectors.in_progress.labels(jobtype, queue)
        self.ok = self.failed = self.dropped = 0
        self.running = 0
        self.duration = _Tally(collectors.duration_bounds)

    def publish(self) -> None:
        for count, child in (
            (self.ok, self.ok_child),
            (self.failed, self.failed_child),
            (self.dropped, self.dropped_child),
        ):
            if count:
                child.inc(count)
        self.ok = self.failed = self.dropped = 0
        self.duration.publish(self.duration_child)
        self.in_progress_child.set(self.running)


class _Collectors:
    """The metric objects of a :class:`WorkerMetrics`, made in the process that uses them."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        buckets: Sequence[float],
        latency_buckets: Sequence[float],
    ) -> None:
        self.duration_bounds = (*buckets, math.inf)
        self.latency_bounds = (*latency_buckets, math.inf)

        def metric(kind: type[_M], name: str, labels: Sequence[str], **options: Any) -> _M:
            # A Counter's samples (and its WORKER_METRICS entry) end in _total.
            key = f"{name}_total" if kind is Counter else name
            return kind(name, WORKER_METRICS[key], labels, registry=registry, **options)

        self.jobs = metric(Counter, "kaffi_jobs", ("jobtype", "queue", "outcome"))
        self.duration = metric(
            Histogram, "kaffi_job_duration_seconds", ("jobtype", "queue"), buckets=buckets
        )
        # livesum: with --processes, the jobs running in every live child, added up.
        self.in_progress = metric(
            Gauge, "kaffi_jobs_in_progress", ("jobtype", "queue"), multiprocess_mode="livesum"
        )
        self.latency = metric(
            Histogram, "kaffi_job_latency_seconds", ("queue",), buckets=latency_buckets
        )
        self.fetch_empty = metric(Counter, "kaffi_fetch_empty", ())
        # livesum: with --processes, how many live children are in each state.
        self.state = metric(Gauge, "kaffi_worker_state", ("state",), multiprocess_mode="livesum")
        # livemin: with --processes, 0 as soon as one live child cannot reach the server.
        self.reachable = metric(Gauge, "kaffi_server_reachable", (), multiprocess_mode="livemin")
        self.series: dict[tuple[str, str], _Series] = {}
        #: queue -> (the latency histogram's child, the tally since the last publish).
        self.latencies: dict[str, tuple[Histogram, _Tally]] = {}


class WorkerMetrics(WorkerEvents):
    """A worker's Prometheus metrics (see :data:`WORKER_METRICS`), registered in
    ``registry`` (prometheus-client's default one unless given; None: none).

    Use it as ``app.worker(events=WorkerMetrics())``: the worker tells it about each job
    (:meth:`job_started`, :meth:`job_finished`). To count jobs run outside a worker (the
    testing modes), :meth:`install` its middleware on the App. ``buckets`` are the job
    duration histogram's upper bounds in seconds, ``latency_buckets`` the latency
    histogram's (the +Inf bucket is always added).

    Per job, it only adds to plain numbers; they are published to the
    prometheus-client metrics every ``publish_interval`` seconds on the worker's event
    loop (and when the worker stops), so a scrape may be that much behind. Outside a
    running worker (no loop timer: the testing modes, say) every job is published at once;
    :meth:`publish` does it on demand, on the thread that runs the jobs.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
        publish_interval: float = 1.0,
    ) -> None:
        self.registry = registry
        self.buckets = tuple(buckets)
        self.latency_buckets = tuple(latency_buckets)
        self.publish_interval = publish_interval
        self._collectors: _Collectors | None = None
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None
        #: (a tzinfo, the epoch in it): ``enqueued_at - epoch`` with the same tzinfo object
        #: on both sides skips the UTC offset calls that make ``timestamp()`` dear (0.5 µs).
        self._epoch: tuple[Any, datetime] = (None, _EPOCH)

    def __getstate__(self) -> dict[str, Any]:
        # Only the settings travel (to a worker process): the metric objects and the
        # registry belong to this process; the receiving one registers in its default.
        return {
            "buckets": self.buckets,
            "latency_buckets": self.latency_buckets,
            "publish_interval": self.publish_interval,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(REGISTRY, **state)  # type: ignore[misc]

    @property
    def collectors(self) -> _Collectors:
        """The metric objects, made (and registered) on first use."""
        collectors = self._collectors
        if collectors is None:
            with self._lock:
                if self._collectors is None:
                    self._collectors = _Collectors(
                        self.registry, self.buckets, self.latency_buckets
                    )
                collectors = self._collectors
        return collectors

    # -- middleware -------------------------------------------------------------------------

    def install(self, app: App) -> None:
        """Count the jobs ``app`` runs outside a worker (the testing modes) with the
        :meth:`measure` middleware, first in the chain. A worker given this object as its
        ``events`` counts its jobs without it (and takes it out of the chain, so no job
        counts twice). Calling it again changes nothing."""
        if self.measure not in app.middleware:
            app.middleware.insert(0, self.measure)

    async def measure(self, ctx: JobContext, next: Callable[[], Awaitable[None]]) -> None:
        """Worker middleware around the whole chain: what the worker's
        :meth:`job_started` and :meth:`job_finished` calls do, for jobs run outside a
        worker."""
        job = ctx.job
        self.job_started(None, job)
        started = time.monotonic()
        outcome = "failed"
        try:
            await next()
            outcome = "ok" if ctx.performed else "dropped"
        finally:
            self.job_finished(None, job, time.monotonic() - started, outcome)

    def _series(self, job: JobPayload) -> _Series:
        collectors = self._collectors or self.collectors
        series = collectors.series.get((job.jobtype, job.queue))
        if series is None:
            series = collectors.series[job.jobtype, job.queue] = _Series(
                collectors, job.jobtype, job.queue
            )
        return series

    def job_started(self, worker: Worker | None, job: JobPayload) -> None:
        """A job starts: in progress, and its latency (``enqueued_at`` to now) observed."""
        collectors = self._collectors or self.collectors
        queue = job.queue
        # The lookup of _series inlined: this runs for every job (0.2 µs of 1 µs).
        series = collectors.series.get((job.jobtype, queue))
        if series is None:
            series = self._series(job)
        series.running += 1
        enqueued = job.enqueued_at
        if enqueued is None:
            return
        latency = collectors.latencies.get(queue)
        if latency is None:
            latency = collectors.latencies[queue] = (
                collectors.latency.labels(queue),
                _Tally(collectors.latency_bounds),
            )
        tz, epoch = self._epoch
        if enqueued.tzinfo is not tz:
            tz = enqueued.tzinfo
            epoch = _EPOCH.astimezone(tz) if tz is not None else _EPOCH.replace(tzinfo=None)
            self._epoch = (tz, epoch)
        waited = time.time() - (enqueued - epoch).total_seconds()
        latency[1].add(waited if waited > 0.0 else 0.0)

    def job_finished(
        self, worker: Worker | None, job: JobPayload, duration: float, outcome: str
    ) -> None:
        """A job is done: counted by ``outcome``, its duration observed."""
        series = self._series(job)
        series.running -= 1
        if outcome == "ok":
            series.ok += 1
        elif outcome == "failed":
            series.failed += 1
        else:
            series.dropped += 1
        series.duration.add(duration)
        if self._timer is None:
            self.publish()

    def publish(self) -> None:
        """Move what was counted since the last publish into the prometheus-client
        metrics. Call it on the thread that runs the jobs (the worker's loop does)."""
        collectors = self._collectors
        if collectors is None:
            return
        for series in list(collectors.series.values()):
            series.publish()
        for child, tally in list(collectors.latencies.values()):
            tally.publish(child)

    def _publish_periodically(self, loop: asyncio.AbstractEventLoop) -> None:
        self.publish()
        self._timer = loop.call_later(self.publish_interval, self._publish_periodically, loop)

    # -- WorkerEvents -----------------------------------------------------------------------

    def started(self, worker: Worker) -> None:
        """Start publishing every ``publish_interval`` seconds on the worker's loop; the
        state is running and the server reachable. The worker reports jobs itself, so
        :meth:`measure` leaves its App's chain if it was there."""
        while self.measure in worker.app.middleware:
            worker.app.middleware.remove(self.measure)
        self._set_state("running")
        self.collectors.reachable.set(1)
        if self._timer is None:
            self._publish_periodically(asyncio.get_running_loop())

    def state_changed(self, worker: Worker, state: str) -> None:
        """Show the new state in ``kaffi_worker_state``; once stopped, publish the last
        numbers and stop the timer."""
        if state == "stopped":
            timer, self._timer = self._timer, None
            if timer is not None:
                timer.cancel()
            self.publish()
        self._set_state(state)

    def server_reachable(self, worker: Worker, reachable: bool) -> None:
        """Set ``kaffi_server_reachable``."""
        self.collectors.reachable.set(1 if reachable else 0)

    def fetch_empty(self, worker: Worker) -> None:
        """Count an empty FETCH."""
        self.collectors.fetch_empty.inc()

    def _set_state(self, state: str) -> None:
        current = STATES.get(state, state)
        gauge = self.collectors.state
        for label in STATES.values():
            gauge.labels(label).set(1 if label == current else 0)

    def __repr__(self) -> str:
        return f"<WorkerMetrics buckets={len(self.buckets)}>"


def _push_error_reason(exc: BaseException) -> str:
    """The ``reason`` label of ``kaffi_push_errors_total``: a few causes, never a message
    (which would make a label value per job)."""
    if isinstance(exc, PoolTimeout):
        return "pool_timeout"
    if isinstance(exc, TransportError):
        return "transport"
    if isinstance(exc, ServerError):
        return "server"
    if isinstance(exc, ValidationError):
        return "validation"
    if isinstance(exc, KaffiError):
        return "kaffi"
    return "other"


class PushMetrics:
    """Producer-side metrics, as a push middleware: ``app.use_push(PushMetrics())``.

    ``kaffi_jobs_pushed_total{jobtype,queue}`` counts jobs handed to the server (or, for
    bulk pushes, to the PUSHB being built: a job the server then rejects is in the
    returned list, not here); ``kaffi_push_errors_total{reason}`` counts pushes that
    raised, by cause (``transport``, ``server``, ``pool_timeout``, ``validation``,
    ``kaffi``, ``other``). It is a plain middleware, so ``.delay()`` calls it directly.
    The collectors are registered in ``registry`` (prometheus-client's default one, which
    a web app's ``/metrics`` already serves) when it is made.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        self.pushed = Counter(
            "kaffi_jobs_pushed",
            "Jobs pushed, by jobtype and queue.",
            ["jobtype", "queue"],
            registry=registry,
        )
        self.errors = Counter(
            "kaffi_push_errors",
            "Pushes that failed, by reason.",
            ["reason"],
            registry=registry,
        )

    def install(self, app: App) -> None:
        """``app.use_push(self)``, once."""
        if self not in app.push_middleware:
            app.use_push(self)

    def __call__(self, ctx: PushContext, next: Callable[[], None]) -> None:
        """Push middleware: count the push or its error."""
        try:
            next()
        except BaseException as exc:
            self.errors.labels(_push_error_reason(exc)).inc()
            raise
        if ctx.jid is not None:  # None: a later middleware dropped the job
            job = ctx.job
            self.pushed.labels(job.jobtype, job.queue).inc()


class MetricsServer(Closing):
    """A ``/metrics`` HTTP server in a daemon thread (prometheus-client's own), serving
    ``registry``; :attr:`url` is where it listens. Stop it with :meth:`close`."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port: int = httpd.server_port

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        return f"http://{format_address(self.host, self.port)}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def serve_metrics(
    address: str, registry: CollectorRegistry = REGISTRY, *, what: str = "metrics address"
) -> MetricsServer:
    """Serve ``registry`` on ``address`` (``HOST:PORT``; ``:PORT`` is the loopback
    address) from a daemon thread. A bad address or a port in use raises
    ConfigurationError naming it."""
    host, port = parse_listen_address(address, what=what)
    try:
        httpd, thread = start_http_server(port, host, registry)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {format_address(host, port)}: {exc.strerror or exc}"
        ) from None
    server = MetricsServer(httpd, thread, host)
    log.info("serving metrics on %s", server.url)
    return server


class MultiprocessMetrics:
    """The supervisor's side of metrics with ``--processes N``.

    Made before the children start: it picks the directory prometheus-client's
    multiprocess mode keeps its files in (``directory``, else ``PROMETHEUS_MULTIPROC_DIR``,
    else a new temporary one), empties it (numbers left by an earlier run would be added
    in), and sets ``PROMETHEUS_MULTIPROC_DIR`` so every child started from now on writes
    there. :meth:`registry` adds the children's numbers up (plus the supervisor's own
    process metrics); :meth:`child_exited` drops a dead child's live gauges (its counters
    and histograms stay: they count what it did); :meth:`close` removes a directory it
    created.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        given = directory if directory is not None else os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._created = given is None
        path = Path(tempfile.mkdtemp(prefix="kaffi-metrics-")) if given is None else Path(given)
        try:
            path.mkdir(parents=True, exist_ok=True)
            for stale in path.glob("*.db"):
                stale.unlink()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot use {path} for multiprocess metrics: {exc.strerror or exc}"
            ) from None
        self.directory = path
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)

    def registry(self) -> CollectorRegistry:
        """A registry that adds up every child's numbers, read at each scrape."""
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(self.directory))  # type: ignore[no-untyped-call]
        ProcessCollector(registry=registry)
        return registry

    def child_exited(self, pid: int) -> None:
        """A child is gone: drop its live gauges (in progress, state, reachable)."""
        multiprocess.mark_process_dead(pid, str(self.directory))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Remove the directory when this object created it."""
        if self._created:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<MultiprocessMetrics {self.directory}>"


def start_worker_metrics(
    cleanup: contextlib.ExitStack,
    address: str,
    buckets: str | None = None,
    *,
    supervised: bool = False,
) -> tuple[WorkerMetrics, Callable[[int], None] | None]:
    """What ``kaffi worker --metrics ADDRESS`` sets up before the worker starts: the
    :class:`WorkerMetrics` to give the worker (``buckets``: :func:`parse_buckets`' text),
    and the ``/metrics`` server. ``supervised``: worker processes under a supervisor, so
    multiprocess mode (:class:`MultiprocessMetrics`), and the callback the supervisor
    calls when a child exits (None otherwise). Everything started is stopped by
    ``cleanup``."""
    try:
        chosen = parse_buckets(buckets) if buckets else DEFAULT_BUCKETS
    except ConfigurationError as exc:
        # Named: the list may come from KAFFI_METRICS_BUCKETS, not the command line.
        raise ConfigurationError(f"--metrics-buckets {buckets!r}: {exc}") from None
    events = WorkerMetrics(buckets=chosen)
    if not supervised:
        cleanup.callback(serve_metrics(address, what="--metrics").close)
        return events, None
    parse_listen_address(address, what="--metrics")  # before the directory is made
    shared = MultiprocessMetrics()
    cleanup.callback(shared.close)
    cleanup.callback(serve_metrics(address, shared.registry(), what="--metrics").close)
    return events, shared.child_exited
