"""The results of a run: :class:`Throughput` and :class:`Gauge` figures in :class:`Results`.

Standard library only, so the chart (which runs in the bench-only virtualenv) can read
``bench/results/latest.json`` without kaffi's dependencies. :meth:`Results.add` keeps the
best of repeated measurements of the same operation and client.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["Gauge", "Results", "Throughput"]


@dataclass
class Throughput:
    """``jobs`` done in ``seconds`` by ``client`` doing ``operation``.

    ``client_cpu`` and ``server_cpu`` are the CPU seconds (user + system) the client's and
    the server's processes spent over the same span, where they could be read: unlike
    wall time, CPU per job hardly moves when neighbours load the machine.
    """

    operation: str
    client: str
    jobs: int
    seconds: float
    note: str = ""
    client_cpu: float | None = None
    server_cpu: float | None = None

    @property
    def client_us_per_job(self) -> float | None:
        return None if self.client_cpu is None else self.client_cpu / self.jobs * 1e6

    @property
    def server_us_per_job(self) -> float | None:
        return None if self.server_cpu is None else self.server_cpu / self.jobs * 1e6

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Gauge:
    """One non-throughput figure: a start-up time, a memory size."""

    metric: str
    client: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Results:
    """Everything one run measured, plus where and when."""

    throughputs: list[Throughput] = field(default_factory=list)
    gauges: list[Gauge] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    #: Measurements that were not taken, each with the reason (shown in the report).
    skipped: list[str] = field(default_factory=list)

    def add(self, item: Throughput | Gauge) -> None:
        if isinstance(item, Throughput):
            # Keep the best of repeated runs: on a shared machine the slow ones measure the
            # neighbours, not the code.
            for i, old in enumerate(self.throughputs):
                if old.operation == item.operation and old.client == item.client:
                    if item.rate > old.rate:
                        self.throughputs[i] = item
                    return
            self.throughputs.append(item)
        else:
            # Start-up times and memory: the smallest of the repeats, for the same reason.
            for i, old_gauge in enumerate(self.gauges):
                if old_gauge.metric == item.metric and old_gauge.client == item.client:
                    if item.value < old_gauge.value:
                        self.gauges[i] = item
                    return
            self.gauges.append(item)

    def rate(self, operation: str, client: str) -> float | None:
        for t in self.throughputs:
            if t.operation == operation and t.client == client:
                return t.rate
        return None

    def gauge(self, metric: str, client: str) -> float | None:
        for g in self.gauges:
            if g.metric == metric and g.client == client:
                return g.value
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Results:
        doc = json.loads(text)
        return cls(
            throughputs=[Throughput(**t) for t in doc.get("throughputs", [])],
            gauges=[Gauge(**g) for g in doc.get("gauges", [])],
            meta={str(k): str(v) for k, v in doc.get("meta", {}).items()},
            skipped=[str(s) for s in doc.get("skipped", [])],
        )
