"""``kaffi exporter``: a Faktory server's queues and sets as Prometheus metrics.

:class:`FaktoryCollector` is a prometheus-client collector: each scrape asks the server
(INFO, then ``QUEUE LATENCY`` for the queues INFO lists) through a sync kaffi
:class:`~kaffi.client.Client`, unless the last answer is younger than ``cache_seconds``.
At most one INFO is in flight: concurrent scrapes wait for the one asking and share its
answer, or its failure. A server that cannot be asked gives ``faktory_up 0`` and nothing
else, and the exporter keeps serving; the outage is logged once, and its end once.

It works against any Faktory-compatible server (Faktory itself, ``kaffi server``), reading
only what INFO documents (:data:`SERVER_METRICS`). :func:`run_exporter` serves it until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING

from kaffi.contrib import require
from kaffi.errors import KaffiError

require("prometheus_client", "prometheus")

from prometheus_client import CollectorRegistry  # noqa: E402 - after the check naming the extra
from prometheus_client.core import (  # noqa: E402
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector  # noqa: E402

if TYPE_CHECKING:
    from kaffi.client import Client, ConnectionSettings

__all__ = ["DEFAULT_CACHE_SECONDS", "SERVER_METRICS", "FaktoryCollector", "run_exporter"]

log = logging.getLogger("kaffi.exporter")

#: How long one answer from the server serves scrapes.
DEFAULT_CACHE_SECONDS = 1.0
#: The sets INFO reports (``faktory.sets``); the label values of ``faktory_set_size``.
SETS = ("scheduled", "retries", "dead", "working")
#: Older servers report set sizes only under ``faktory.tasks``: where each set is found there.
_TASK_OF_SET = {"scheduled": "Scheduled", "retries": "Retries", "dead": "Dead", "working": "Busy"}

#: Every metric's name (as exposed) and what it says; docs/observability.md shows them.
SERVER_METRICS = {
    "faktory_up": "1 when the last INFO succeeded, 0 when the server could not be asked.",
    "faktory_queue_size": "Jobs waiting in each queue.",
    "faktory_queue_latency_seconds": "Seconds the oldest job of each queue has waited.",
    "faktory_set_size": "Jobs in each set (scheduled, retries, dead, working).",
    "faktory_processed_total": "Jobs processed since the server started.",
    "faktory_failures_total": "Jobs failed since the server started.",
    "faktory_connections": "Client connections open on the server.",
    "faktory_workers": "Worker processes the server knows (when it says).",
}


@dataclass
class _Snapshot:
    """One answer of the server, as the metrics need it."""

    queues: dict[str, int]
    latency: dict[str, float]
    sets: dict[str, int]
    processed: int
    failures: int
    connections: int
    workers: int | None
    taken: float = field(default=0.0)


class FaktoryCollector(Collector):
    """Collects a Faktory server's numbers at each scrape (see the module docstring).

    ``client`` is used for INFO and QUEUE LATENCY only; ``clock`` is there for tests.
    """

    def __init__(
        self,
        client: Client,
        *,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.cache_seconds = cache_seconds
        self._clock = clock
        # Held while asking the server: never two INFOs at once.
        self._asking = threading.Lock()
        self._last: _Snapshot | None = None
        # When the last ask failed: a failure serves scrapes for cache_seconds too, so
        # scrapes queued behind an ask that timed out do not each wait out another one.
        self._failed_at: float | None = None
        self._down = False
        #: INFO commands sent (the tests check the cache and the single flight with it).
        self.asked = 0

    def snapshot(self) -> _Snapshot | None:
        """The server's numbers, at most ``cache_seconds`` old; None when it cannot be
        asked (the error is logged once per outage, and the failure, like an answer, is
        reused for ``cache_seconds``)."""
        with self._asking:
            last = self._last
            now = self._clock()
            if last is not None and now - last.taken < self.cache_seconds:
                return last
            failed = self._failed_at
            if failed is not None and now - failed < self.cache_seconds:
                return None
            try:
                snap = self._fetch()
            except KaffiError as exc:
                self._last = None
                self._failed_at = self._clock()
                if not self._down:
                    log.warning("cannot ask the Faktory server (faktory_up is 0): %s", exc)
                    self._down = True
                return None
            if self._down:
                log.info("the Faktory server answers again")
                self._down = False
            snap.taken = self._clock()
            self._last = snap
            self._failed_at = None
            return snap

    def _fetch(self) -> _Snapshot:
        self.asked += 1
        info = self.client.info()
        faktory = info.faktory
        queues = dict(faktory.queues)
        latency = self.client.queue_latency(*queues) if queues else {}
        sets = {name: faktory.sets[name] for name in SETS if name in faktory.sets}
        for name in SETS:
            size = None if name in sets else faktory.task_size(_TASK_OF_SET[name])
            if size is not None:
                sets[name] = size
        return _Snapshot(
            queues=queues,
            latency=latency,
            sets=sets,
            processed=faktory.total_processed,
            failures=faktory.total_failures,
            connections=info.server.connections,
            workers=faktory.registered_workers,
        )

    def collect(self) -> Iterator[Metric]:
        """The metrics of :data:`SERVER_METRICS` (only ``faktory_up`` when the server
        cannot be asked)."""
        snap = self.snapshot()
        doc = SERVER_METRICS
        yield GaugeMetricFamily("faktory_up", doc["faktory_up"], value=0 if snap is None else 1)
        if snap is None:
            return
        size = GaugeMetricFamily("faktory_queue_size", doc["faktory_queue_size"], labels=["queue"])
        latency = GaugeMetricFamily(
            "faktory_queue_latency_seconds", doc["faktory_queue_latency_seconds"], labels=["queue"]
        )
        for queue, jobs in sorted(snap.queues.items()):
            size.add_metric([queue], jobs)
            if queue in snap.latency:
                latency.add_metric([queue], snap.latency[queue])
        yield size
        yield latency
        sets = GaugeMetricFamily("faktory_set_size", doc["faktory_set_size"], labels=["set"])
        for name, jobs in snap.sets.items():
            sets.add_metric([name], jobs)
        yield sets
        yield CounterMetricFamily(
            "faktory_processed", doc["faktory_processed_total"], value=snap.processed
        )
        yield CounterMetricFamily(
            "faktory_failures", doc["faktory_failures_total"], value=snap.failures
        )
        yield GaugeMetricFamily(
            "faktory_connections", doc["faktory_connections"], value=snap.connections
        )
        if snap.workers is not None:
            yield GaugeMetricFamily("faktory_workers", doc["faktory_workers"], value=snap.workers)

    def describe(self) -> Iterator[Metric]:
        """Nothing: the registry must not scrape the server when this is registered."""
        return iter(())


def run_exporter(
    server: str | ConnectionSettings | None,
    listen: str,
    *,
    cache_seconds: float = DEFAULT_CACHE_SECONDS,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the metrics of ``server`` (a URL, settings, or None for the environment's
    server) on ``listen`` (``HOST:PORT``) until SIGTERM or SIGINT; ``ready`` is called with
    the ``/metrics`` URL once serving."""
    from kaffi.client import Client
    from kaffi.contrib.prometheus import serve_metrics

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if isinstance(server, str) or server is None:
        client = Client(server, pool_size=1)
    else:
        client = Client(settings=server, pool_size=1)
    with client:
        registry = CollectorRegistry()
        registry.register(FaktoryCollector(client, cache_seconds=cache_seconds))
        http = serve_metrics(listen, registry, what="--listen")
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("exporting the metrics of %s", client.settings.url)
            if ready is not None:
                ready(http.url)
            while not stop.wait(3600):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            http.close()
