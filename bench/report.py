"""Turning :class:`~bench.harness.Results` into tables, target verdicts and the docs page.

- :func:`throughput_table` and :func:`gauge_table`: markdown, one row per figure, with
  each throughput's ratio to Node's ``faktory-worker`` doing the same operation and to
  the raw ceiling the operation is read against (:data:`bench.names.CEILING_OF`);
- :func:`check_targets`: the targets of the benchmark, worker and server issues, each as
  a :class:`Verdict` (held, missed, or not measured in this run);
- :func:`render_page`: the whole of ``docs/benchmarks.md``.

Pure functions of the results: nothing here measures or touches the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.harness import Results, Throughput
from bench.names import (
    CEILING_OF,
    CLIENT_ORDER,
    KAFFI_BULK,
    KAFFI_DELAY,
    KAFFI_DELAY_MANY,
    KAFFI_WORKER,
    KAFFI_WORKER_METRICS,
    METRICS_RATIO_METRIC,
    OP_BULK,
    OP_CPU_1,
    OP_CPU_2,
    OP_DRAIN_1,
    OP_RAW_FETCH_ACK,
    OP_RAW_PUSH,
    OP_RAW_PUSHB,
    OP_SINGLE,
    OPERATION_ORDER,
    RAW,
)
from bench.peers import NODE_CLIENT
from bench.raw import MEMORY_METRIC
from bench.workers import IDLE_RSS_METRIC, STARTUP_METRIC

__all__ = [
    "Verdict",
    "check_targets",
    "gauge_table",
    "render_page",
    "targets_table",
    "throughput_table",
]

SERVER = "kaffi server"


def _fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def _fmt_us(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def _sorted(results: Results) -> list[Throughput]:
    op_rank = {op: i for i, op in enumerate(OPERATION_ORDER)}
    client_rank = {c: i for i, c in enumerate(CLIENT_ORDER)}

    def key(t: Throughput) -> tuple[int, int, str]:
        peer_rank = len(CLIENT_ORDER) + (0 if t.client == NODE_CLIENT else 1)
        if t.client == RAW:
            peer_rank += 10
        return (
            op_rank.get(t.operation, len(op_rank)),
            client_rank.get(t.client, peer_rank),
            t.client,
        )

    return sorted(results.throughputs, key=key)


def node_ratio(results: Results, t: Throughput) -> float | None:
    if t.client in (NODE_CLIENT, RAW):
        return None
    node = results.rate(t.operation, NODE_CLIENT)
    return t.rate / node if node else None


def ceiling_ratio(results: Results, t: Throughput) -> float | None:
    ceiling_op = CEILING_OF.get(t.operation)
    if ceiling_op is None:
        return None
    ceiling = results.rate(ceiling_op, RAW)
    return t.rate / ceiling if ceiling else None


def throughput_table(results: Results) -> str:
    lines = [
        "| operation | client | jobs | jobs/s | vs Node faktory-worker | vs raw ceiling "
        "| client CPU µs/job | server CPU µs/job |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    previous = None
    for t in _sorted(results):
        operation = t.operation if t.operation != previous else ""
        previous = t.operation
        client = f"**{t.client}**" if t.client.startswith("kaffi") else t.client
        if t.note:
            client += f" ({t.note})"
        lines.append(
            f"| {operation} | {client} | {t.jobs:,} | {_fmt_rate(t.rate)} "
            f"| {_fmt_ratio(node_ratio(results, t))} | {_fmt_ratio(ceiling_ratio(results, t))} "
            f"| {_fmt_us(t.client_us_per_job)} | {_fmt_us(t.server_us_per_job)} |"
        )
    return "\n".join(lines)


def gauge_table(results: Results) -> str:
    lines = ["| measure | client | value |", "| --- | --- | ---: |"]
    previous = None
    for g in sorted(results.gauges, key=lambda g: (g.metric, not g.client.startswith("kaffi"))):
        metric = g.metric if g.metric != previous else ""
        previous = g.metric
        if g.unit == "x":  # a ratio
            value = f"{g.value:.2f}x"
        elif g.unit == "s":
            value = f"{g.value:.2f} {g.unit}"
        else:
            value = f"{g.value:.0f} {g.unit}"
        client = f"**{g.client}**" if g.client.startswith("kaffi") else g.client
        if g.note:
            client += f" ({g.note})"
        lines.append(f"| {metric} | {client} | {value} |")
    return "\n".join(lines)


@dataclass
class Verdict:
    """One target: what it asks, what was measured, and whether it holds."""

    name: str
    wanted: str
    measured: str
    holds: bool | None  # None: not measured in this run

    @property
    def status(self) -> str:
        return {True: "holds", False: "MISSED", None: "not measured"}[self.holds]


def _ratio_target(
    name: str, wanted: float, num: float | None, den: float | None, what: str
) -> Verdict:
    if num is None or not den:
        return Verdict(name, f">= {wanted}x {what}", "", None)
    ratio = num / den
    return Verdict(name, f">= {wanted}x {what}", f"{ratio:.2f}x", ratio >= wanted)


def _absolute_target(
    name: str, value: float | None, *, limit: float, unit: str, above: bool
) -> Verdict:
    wanted = f"{'>=' if above else '<'} {limit:,.0f} {unit}" if limit >= 10 else ""
    if not wanted:
        wanted = f"{'>=' if above else '<'} {limit} {unit}"
    if value is None:
        return Verdict(name, wanted, "", None)
    shown = f"{value:,.0f} {unit}" if value >= 10 else f"{value:.2f} {unit}"
    return Verdict(name, wanted, shown, value >= limit if above else value < limit)


def _metrics_target(results: Results) -> Verdict:
    """``--metrics`` costs at most 10% of the drain: the median of the paired blocks'
    ratios (see ``metrics_cost`` in :mod:`bench.cli`), not a ratio of two best runs
    taken seconds apart."""
    name = "drain, 1 process, with --metrics vs without (median of paired blocks)"
    ratio = results.gauge(METRICS_RATIO_METRIC, KAFFI_WORKER_METRICS)
    if ratio is None:
        return Verdict(name, ">= 0.9x without", "", None)
    return Verdict(name, ">= 0.9x without", f"{ratio:.2f}x", ratio >= 0.9)


def check_targets(results: Results) -> list[Verdict]:
    r: Callable[[str, str], float | None] = results.rate
    bulk = max(
        (v for v in (r(OP_BULK, KAFFI_DELAY_MANY), r(OP_BULK, KAFFI_BULK)) if v is not None),
        default=None,
    )
    return [
        _ratio_target(
            ".delay() one at a time vs Node job().push()",
            1.3,
            r(OP_SINGLE, KAFFI_DELAY),
            r(OP_SINGLE, NODE_CLIENT),
            "Node",
        ),
        _ratio_target(
            "bulk enqueue (best of .delay_many / push_bulk) vs raw PUSHB",
            0.85,
            bulk,
            r(OP_RAW_PUSHB, RAW),
            "raw PUSHB",
        ),
        _ratio_target(
            "drain, 1 process, concurrency 20, vs Node worker",
            2.0,
            r(OP_DRAIN_1, KAFFI_WORKER),
            r(OP_DRAIN_1, NODE_CLIENT),
            "Node",
        ),
        _ratio_target(
            "drain, 1 process, concurrency 20, vs raw FETCH+ACK",
            0.75,
            r(OP_DRAIN_1, KAFFI_WORKER),
            r(OP_RAW_FETCH_ACK, RAW),
            "raw FETCH+ACK",
        ),
        _metrics_target(results),
        _ratio_target(
            "CPU-bound, 2 processes vs 1 process",
            1.7,
            r(OP_CPU_2, KAFFI_WORKER),
            r(OP_CPU_1, KAFFI_WORKER),
            "1 process",
        ),
        _absolute_target(
            "server: pipelined PUSH", r(OP_RAW_PUSH, RAW), limit=10_000, unit="jobs/s", above=True
        ),
        _absolute_target(
            "server: FETCH+ACK over 20 connections",
            r(OP_RAW_FETCH_ACK, RAW),
            limit=5_000,
            unit="jobs/s",
            above=True,
        ),
        _absolute_target(
            "server: RSS with 100,000 queued jobs",
            results.gauge(MEMORY_METRIC, SERVER),
            limit=200,
            unit="MB",
            above=False,
        ),
        _absolute_target(
            "worker: idle RSS per process",
            results.gauge(IDLE_RSS_METRIC, KAFFI_WORKER),
            limit=60,
            unit="MB",
            above=False,
        ),
        _absolute_target(
            "worker: start-up to first FETCH",
            results.gauge(STARTUP_METRIC, KAFFI_WORKER),
            limit=1.0,
            unit="s",
            above=False,
        ),
    ]


def targets_table(verdicts: list[Verdict]) -> str:
    lines = ["| target | wanted | measured | verdict |", "| --- | --- | ---: | --- |"]
    for v in verdicts:
        status = f"**{v.status}**" if v.holds is False else v.status
        lines.append(f"| {v.name} | {v.wanted} | {v.measured} | {status} |")
    return "\n".join(lines)


def _meta_lines(results: Results) -> str:
    order = (
        ("date", "Measured"),
        ("machine", "Machine"),
        ("load", "Load"),
        ("cpu_job", "CPU-bound job"),
        ("python", "Python"),
        ("kaffi", "kaffi"),
        ("server", "Server"),
        ("peers", "Peers"),
        ("mode", "Mode"),
    )
    lines = []
    for key, label in order:
        if key in results.meta:
            lines.append(f"- **{label}:** {results.meta[key]}")
    return "\n".join(lines)


_INTRO = """\
# Benchmarks

How fast kaffi enqueues and works jobs, side by side with the other Faktory clients on the
same server, in the same run, and as a share of what the server itself can take. The
numbers below were produced by the suite in `bench/` and written to this page by it.

## Run it

```bash
python -m bench                # everything; installs the peers into bench/.env/ first
python -m bench --targets      # the same, then checks the targets below (exit 1 on a miss)
python -m bench --quick --no-write   # the smoke run CI does: small N, prints only
FAKTORY_URL=tcp://127.0.0.1:7419 python -m bench   # against a real Faktory on this machine
python -m bench.profile drain  # where a hot path spends its time (py-spy; see --help)
```

The suite FLUSHes the server between runs: never point it at a server whose jobs matter.

Without `FAKTORY_URL` the suite starts kaffi's embedded server in a process of its own, so
the server never shares a GIL with the client being measured. The other clients (Node's
`faktory-worker` 4.7.1, PyPI's `faktory` 1.0.0 and `pyfaktory` 0.2.13) and matplotlib
for the chart are installed by the suite into `bench/.env/`, which git ignores; kaffi's
own environment is never touched. The suite sends load only to loopback addresses.
"""

_METHOD = """\
## How it measures

- **Enqueue** figures are timed inside each client's own process, after it connected, over
  N jobs of type `noop` with no arguments. *One at a time* waits for each reply before
  the next push; *bulk* sends batches of 1000 (PUSHB); *8 threads* shares one client
  between 8 threads where the client is thread-safe (kaffi) and gives each thread its own
  connection where it is not (the PyPI clients); *asyncio, 50 in flight* runs 50
  concurrent pushers over a pool of 50 connections (kaffi's AsyncClient, Node's client).
- **Drain** figures fill a fresh queue with the jobs first (raw PUSHB, so filling costs the
  worker nothing), start the worker as its users would (`kaffi worker bench.tasks:app
  --concurrency 20 [--processes 2] --burst`, `node`, the PyPI workers), and time from
  the first job taken to the queue empty with nothing reserved. INFO is read every 10 ms
  at both ends of a drain and more rarely in between (at most every 0.25 s), so the
  harness's own requests cost the machine under test next to nothing. Start-up is
  measured on its own and does not count against a drain.
- **CPU-bound** jobs are pure Python loops calibrated at the start of the run to about
  1 ms each on this machine.
- **Start-up** is the time from spawning the worker process to its first job fetched (one
  job waiting); **idle RSS** is read from `/proc` one second after that job.
- **CPU µs/job** is the CPU time (user + system) the client's processes and the server's
  process used over the measured span, divided by the jobs: read from `/proc` for worker
  and server processes, from each client's own process clock for enqueues. Wall-clock
  rates move with whatever else the machine runs; CPU per job hardly does, so it is the
  column to compare between runs on a busy machine.
- **Raw ceilings** use the cheapest possible client: pre-built command bytes on a socket.
  Pipelined PUSH writes every line back to back while a reader counts the replies; PUSHB
  sends batches of 1000, one round trip each; FETCH+ACK runs 20 asyncio connections,
  each writing its ACK together with its next FETCH. *vs raw ceiling* divides a client's
  figure by the ceiling of its kind (enqueues by pipelined PUSH, bulk by PUSHB, drains by
  FETCH+ACK).
- Between runs the suite flushes the server and waits out the FETCH a stopped worker may
  still have blocked (about 2 s), and every drain uses a queue no earlier run used, so no
  run steals another's jobs. Each figure is the best of the repeats in the run: on a
  shared machine the slower repeats measure the neighbours, not the code.
"""


def render_page(results: Results, *, chart: str | None, notes: str = "") -> str:
    """The whole of ``docs/benchmarks.md``; ``chart`` is the image path relative to docs/."""
    parts = [_INTRO, "## Results", "", _meta_lines(results), ""]
    if chart is not None:
        parts += [f"![Jobs per second, by operation and client]({chart})", ""]
    parts += [
        "### Throughput",
        "",
        throughput_table(results),
        "",
        "### Start-up and memory",
        "",
        gauge_table(results),
        "",
        "## Targets",
        "",
        "From the benchmark, worker and server issues. Ratios are taken within this one run,",
        "so the machine's load weighs on both sides of each ratio alike.",
        "",
        targets_table(check_targets(results)),
        "",
    ]
    if notes:
        parts += [notes.rstrip(), ""]
    if results.skipped:
        parts += ["### Not measured in this run", ""]
        parts += [f"- {s}" for s in results.skipped]
        parts.append("")
    parts.append(_METHOD)
    return "\n".join(parts)
