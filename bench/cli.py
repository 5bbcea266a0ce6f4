"""``python -m bench``: run the suite, print the table, write the page, check the targets.

Options:

- ``--quick``: small N, one repeat, no waiting out blocked FETCHes (each drain has its own
  queue anyway), no peer installs (peers already in ``bench/.env/`` still run), no ratios
  asserted; under a minute. CI runs ``python -m bench --quick --no-write``.
- ``--no-write``: print only; ``docs/benchmarks.md``, the chart and
  ``bench/results/latest.json`` stay as they are.
- ``--targets``: print whether each target holds; exit 1 when one is missed (never in
  ``--quick``, whose small N cannot support a verdict).
- ``--repeat N``: run every measurement N times and keep the best (default 3; 1 quick).
- ``--only raw,drain``: run only these sections (memory, raw, enqueue, drain, metrics,
  startup), for re-measuring one path while optimising it; combine with ``--no-write``.
  ``metrics`` is the cost of ``kaffi worker --metrics``: two long-running 1-process
  workers, without and with metrics, drain the same number of no-op jobs in turn, in
  paired blocks; the median of the blocks' ratios is the figure.
- ``--render``: measure nothing; redraw the chart and rewrite the page from
  ``bench/results/latest.json`` (after editing ``bench/notes.md``, say).
- ``--no-peers``: kaffi and the raw ceilings only. ``--url``: the server (default
  ``FAKTORY_URL``, else an embedded server started for the run). The suite FLUSHes that
  server between runs, and refuses any address that is not a loopback one.

A measurement that fails is reported under "Not measured in this run" with its reason,
and the rest of the suite carries on; the exit code is then 1 if it was one of kaffi's or
the server's own (a peer that cannot be installed or run only costs its rows), so CI's
quick run catches a suite or a worker that stopped working.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench import kaffi_suite, raw
from bench.harness import (
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    Endpoint,
    Gauge,
    Results,
    ServerControl,
    ServerProcess,
    Throughput,
    cpu_seconds,
)
from bench.names import (
    KAFFI_WORKER,
    KAFFI_WORKER_2,
    KAFFI_WORKER_ASYNC,
    KAFFI_WORKER_METRICS,
    METRICS_RATIO_METRIC,
    OP_ASYNC,
    OP_BULK,
    OP_CPU_1,
    OP_CPU_2,
    OP_DRAIN_1,
    OP_DRAIN_2,
    OP_SINGLE,
    OP_THREADS,
)
from bench.peers import Peer, available_peers, install, venv_python
from bench.report import check_targets, gauge_table, render_page, targets_table, throughput_table
from bench.tasks import calibrate_spin
from bench.workers import Spawner, drain, paired_drains, startup

__all__ = ["FULL", "QUICK", "Sizes", "main"]

PAGE = REPO_ROOT / "docs" / "benchmarks.md"
CHART = REPO_ROOT / "docs" / "img" / "benchmarks.svg"
NOTES = REPO_ROOT / "bench" / "notes.md"
LATEST = RESULTS_DIR / "latest.json"


@dataclass(frozen=True)
class Sizes:
    """How many jobs each measurement uses."""

    single: int
    bulk: int
    threads: int
    asyncio: int
    drain: int
    cpu: int
    raw_push: int
    raw_sequential: int
    raw_pushb: int
    raw_fetch: int
    memory: int  # 0: skip the queued-memory measurement
    timeout: float


# Sized so a run lasts a second or more: the one-at-a-time enqueue swung by ~10% at 5,000
# jobs (0.4 s), and the second process of a 2-process CPU-bound drain starts ~40 ms after
# the first, which cost 3-4% of a 2,000-job run (1.1 s) and ~1.5% of a 5,000-job one.
FULL = Sizes(
    single=20_000,
    bulk=50_000,
    threads=8_000,
    asyncio=10_000,
    drain=10_000,
    cpu=5_000,
    raw_push=50_000,
    raw_sequential=20_000,  # as many as the one-at-a-time enqueues it is the floor of
    raw_pushb=100_000,
    raw_fetch=20_000,
    memory=100_000,
    timeout=300.0,
)
QUICK = Sizes(
    single=200,
    bulk=2_000,
    threads=400,
    asyncio=500,
    drain=500,
    cpu=100,
    raw_push=2_000,
    raw_sequential=300,
    raw_pushb=4_000,
    raw_fetch=1_000,
    memory=0,
    timeout=60.0,
)

#: What ``--only`` can choose from.
SECTIONS = ("memory", "raw", "enqueue", "drain", "metrics", "startup")

#: Driver operation -> the suite's operation name.
PEER_ENQUEUE_OPS = {
    "push": OP_SINGLE,
    "push_bulk": OP_BULK,
    "push_threads": OP_THREADS,
    "push_async": OP_ASYNC,
}

#: How long a peer's worker gets to leave after SIGTERM before it is killed (full, quick):
#: how fast a peer shuts down is not measured, and pyfaktory's grace period alone is 25 s.
PEER_STOP_TIMEOUT = (5.0, 2.0)
#: The embedded server's empty-FETCH wait in a --quick run, in seconds.
QUICK_FETCH_HOLD = 0.1
#: Paired blocks of the --metrics cost per round (full, quick).
METRICS_BLOCKS = (8, 2)

_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class Runner:
    """Runs measurements into :class:`Results`, turning a failure into a skip line."""

    def __init__(
        self,
        results: Results,
        control: ServerControl,
        url: str,
        sizes: Sizes,
        *,
        quick: bool,
        server_pid: int | None,
        log_dir: Path,
    ) -> None:
        self.server_pid = server_pid
        self.results = results
        self.control = control
        self.url = url
        self.sizes = sizes
        self.quick = quick
        self.peer_stop_timeout = PEER_STOP_TIMEOUT[1 if quick else 0]
        self.worker_log = log_dir / "workers.log"
        self.worker_log.write_bytes(b"")
        #: Failed measurements of kaffi or the server (not of a peer): the run fails.
        self.own_failures: list[str] = []

    def attempt(self, label: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # a failing client or worker must not stop the suite
            self._skip(label, exc)

    def _skip(self, label: str, exc: BaseException) -> None:
        reason = f"{label}: {type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        log(f"NOT MEASURED {reason}")
        if reason not in self.results.skipped:
            self.results.skipped.append(reason)
        if label.startswith(("kaffi", "raw", "server")):
            # kaffi's own measurements must work wherever kaffi does; a peer may be missing.
            self.own_failures.append(reason)

    def _server_cpu(self) -> float | None:
        return cpu_seconds(self.server_pid) if self.server_pid else None

    def record(self, t: Throughput) -> None:
        cpu = ""
        if t.client_us_per_job is not None:
            cpu += f", client {t.client_us_per_job:.1f} us/job"
        if t.server_us_per_job is not None:
            cpu += f", server {t.server_us_per_job:.1f} us/job"
        log(
            f"{t.operation} | {t.client}: {t.rate:,.0f} jobs/s "
            f"({t.jobs:,} in {t.seconds:.2f} s{cpu})"
        )
        self.results.add(t)

    def enqueue(self, label: str, fn: Callable[[], Throughput]) -> None:
        """An enqueue measurement, checked: the jobs must all be in the queue afterwards."""

        def run() -> None:
            self.control.flush()
            server_cpu = self._server_cpu()
            t = fn()
            if server_cpu is not None:
                t.server_cpu = max((self._server_cpu() or server_cpu) - server_cpu, 0.0)
            size, _ = self.control.pending("default")
            self.control.flush()
            if size != t.jobs:
                raise BenchError(f"{t.jobs} jobs pushed, but the queue holds {size}")
            self.record(t)

        self.attempt(label, run)

    # -- sections -------------------------------------------------------------------------

    def memory(self, server_pid: int) -> None:
        def run() -> None:
            g = raw.queued_memory(self.control, server_pid, self.sizes.memory)
            log(f"{g.metric}: {g.value:.0f} MB ({g.note})")
            self.results.add(g)

        self.attempt("server memory", run)

    def ceilings(self) -> None:
        s, ep = self.sizes, Endpoint.parse(self.url)
        for label, fn in (
            ("raw pipelined PUSH", lambda: raw.push_pipelined(ep, s.raw_push)),
            ("raw PUSH round trips", lambda: raw.push_sequential(ep, s.raw_sequential)),
            ("raw PUSHB", lambda: raw.pushb(ep, s.raw_pushb)),
        ):
            self.enqueue(label, fn)

        def fetch() -> None:
            self.control.flush()
            t = raw.fetch_ack(ep, self.control, s.raw_fetch, server_pid=self.server_pid)
            self.control.flush()
            self.record(t)

        self.attempt("raw FETCH+ACK", fetch)

    def kaffi_enqueue(self) -> None:
        s, url = self.sizes, self.url
        k = kaffi_suite
        self.enqueue("kaffi .delay()", lambda: k.delay_single(url, s.single))
        self.enqueue("kaffi client.push", lambda: k.push_single(url, s.single))
        self.enqueue("kaffi .delay_many()", lambda: k.delay_many(url, s.bulk))
        self.enqueue("kaffi client.push_bulk", lambda: k.push_bulk(url, s.bulk))
        self.enqueue("kaffi .delay() from threads", lambda: k.delay_threads(url, s.threads))
        self.enqueue("kaffi .delay_async()", lambda: k.delay_async(url, s.asyncio))
        self.enqueue("kaffi AsyncClient.push", lambda: k.async_client_push(url, s.asyncio))

    def peers_enqueue(self, peers: list[Peer]) -> None:
        s = self.sizes
        counts = {"push": s.single, "push_bulk": s.bulk, "push_threads": s.threads}
        counts["push_async"] = s.asyncio
        for peer in peers:
            for op, operation in PEER_ENQUEUE_OPS.items():
                if op not in peer.ops:
                    continue

                def run(peer: Peer = peer, op: str = op, operation: str = operation) -> Throughput:
                    return peer.enqueue(
                        op, counts[op], self.url, operation=operation, timeout=s.timeout
                    )

                self.enqueue(f"{peer.name} {op}", run)

    def kaffi_drains(self, spin_loops: int) -> None:
        s, url, wlog = self.sizes, self.url, self.worker_log
        wait = not self.quick
        spawner = kaffi_suite.worker_spawner
        cases: list[tuple[str, int, str, list[int], int, str]] = [
            (OP_DRAIN_1, 1, "noop", [], s.drain, KAFFI_WORKER),
            (OP_DRAIN_1, 1, "noop_async", [], s.drain, KAFFI_WORKER_ASYNC),
            (OP_DRAIN_2, 2, "noop", [], s.drain, KAFFI_WORKER),
            (OP_CPU_1, 1, "spin", [spin_loops], s.cpu, KAFFI_WORKER),
            (OP_CPU_2, 2, "spin", [spin_loops], s.cpu, KAFFI_WORKER),
        ]
        for operation, processes, jobtype, args, jobs, client in cases:

            def run(
                operation: str = operation,
                processes: int = processes,
                jobtype: str = jobtype,
                args: list[int] = args,
                jobs: int = jobs,
                client: str = client,
            ) -> None:
                self.record(
                    drain(
                        self.control,
                        spawner(url, wlog, processes=processes),
                        operation=operation,
                        client=client,
                        jobs=jobs,
                        jobtype=jobtype,
                        args=args,
                        exits_when_done=True,
                        timeout=s.timeout,
                        wait_fetches=wait,
                        server_pid=self.server_pid,
                    )
                )

            self.attempt(f"{client}: {operation}", run)

    def metrics_cost(self) -> None:
        """The 1-process no-op drain without and with ``--metrics``, in short paired
        blocks by two long-running workers (:func:`~bench.workers.paired_drains`): each
        block's ratio compares drains about a second apart. The median of a round's
        ratios is a gauge (the smallest of the rounds is kept); each block's drains also
        count as ordinary rows (best kept)."""
        s, url, wlog = self.sizes, self.url, self.worker_log
        sides = [
            (KAFFI_WORKER, kaffi_suite.worker_spawner(url, wlog, burst=False)),
            (
                KAFFI_WORKER_METRICS,
                kaffi_suite.worker_spawner(url, wlog, burst=False, metrics=True),
            ),
        ]

        def run() -> None:
            blocks = paired_drains(
                self.control,
                sides,
                operation=OP_DRAIN_1,
                jobs=s.drain,
                blocks=METRICS_BLOCKS[1 if self.quick else 0],
                timeout=s.timeout,
                wait_fetches=not self.quick,
                server_pid=self.server_pid,
            )
            ratios = []
            for without, with_metrics in blocks:
                self.record(without)
                self.record(with_metrics)
                ratios.append(with_metrics.rate / without.rate)
            median = statistics.median(ratios)
            shown = " ".join(f"{r:.2f}" for r in ratios)
            log(f"{METRICS_RATIO_METRIC}: {median:.3f}x (blocks: {shown})")
            self.results.add(
                Gauge(
                    METRICS_RATIO_METRIC,
                    KAFFI_WORKER_METRICS,
                    median,
                    "x",
                    note=f"median of {len(ratios)} blocks of {s.drain:,} jobs: {shown}",
                )
            )

        self.attempt(f"{KAFFI_WORKER_METRICS}: {OP_DRAIN_1}", run)

    def peers_drain(self, peers: list[Peer]) -> None:
        for peer in peers:
            if "work" not in peer.ops:
                continue

            def run(peer: Peer = peer) -> None:
                self.record(
                    drain(
                        self.control,
                        peer.spawner(self.url, self.worker_log),
                        operation=OP_DRAIN_1,
                        client=peer.name,
                        jobs=self.sizes.drain,
                        timeout=self.sizes.timeout,
                        stop_timeout=self.peer_stop_timeout,
                        wait_fetches=not self.quick,
                        server_pid=self.server_pid,
                    )
                )

            self.attempt(f"{peer.name}: {OP_DRAIN_1}", run)

    def startups(self, peers: list[Peer]) -> None:
        wlog = self.worker_log
        spawners = [
            (KAFFI_WORKER, kaffi_suite.worker_spawner(self.url, wlog, burst=False)),
            (
                KAFFI_WORKER_2,
                kaffi_suite.worker_spawner(self.url, wlog, processes=2, burst=False),
            ),
        ]
        spawners += [(p.name, p.spawner(self.url, wlog)) for p in peers if "work" in p.ops]
        for client, spawn in spawners:
            ours = client.startswith("kaffi")

            def run(client: str = client, spawn: Spawner = spawn, ours: bool = ours) -> None:
                for g in startup(
                    self.control,
                    spawn,
                    client=client,
                    stop_timeout=15.0 if ours else self.peer_stop_timeout,
                    wait_fetches=not self.quick,
                    largest_process=client == KAFFI_WORKER_2,
                ):
                    log(f"{g.metric} | {g.client}: {g.value:.2f} {g.unit} {g.note}")
                    self.results.add(g)

            self.attempt(f"{client}: start-up and idle memory", run)


# -- the run's circumstances ----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GB RAM"
    except OSError:
        pass
    return "RAM unknown"


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


def _node_version() -> str:
    node = shutil.which("node")
    if node is None:
        return "not installed"
    try:
        out = subprocess.run([node, "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.decode().strip()


def collect_meta(results: Results, *, quick: bool, repeat: int, server: str) -> None:
    import kaffi

    now = datetime.now(timezone.utc)
    results.meta.update(
        {
            "date": now.strftime("%Y-%m-%d, %H:%M UTC"),
            "machine": (
                f"{_cpu_model()}, {os.cpu_count()} cores, {_memory_gb()}, "
                f"{platform.system()} {platform.release()}"
            ),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "kaffi": kaffi.__version__,
            "server": server,
            "mode": (
                "quick (small N, not for comparison)"
                if quick
                else f"full, best of {repeat} repeat{'s' if repeat > 1 else ''}"
            ),
            "load_start": _load(),
        }
    )


def _server_description(control: ServerControl) -> str:
    try:
        info = control.info().get("server", {})
    except (BenchError, OSError) as exc:
        return f"unknown ({exc})"
    return f"{info.get('description', '?')} {info.get('faktory_version', '')}".strip()


# -- output -------------------------------------------------------------------------------


def _draw_chart(results: Results, out: Path) -> str | None:
    """Draw the chart with matplotlib from the bench virtualenv (or this interpreter if it
    has matplotlib); return None, and say why, when neither has it."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "results.json"
        data.write_text(results.to_json())
        for python in (str(venv_python()), sys.executable):
            if not Path(python).is_file():
                continue
            proc = subprocess.run(
                [python, "-m", "bench.chart", str(data), str(out)],
                cwd=REPO_ROOT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                capture_output=True,
                timeout=300,
                check=False,
            )
            if proc.returncode == 0:
                return None
            last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            reason = last[0] if last else f"exit {proc.returncode}"
        return f"no chart: matplotlib is not installed in the bench environment ({reason})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="kaffi's benchmarks, side by side with the other Faktory clients.",
    )
    parser.add_argument("--quick", action="store_true", help="small N, under a minute (CI)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    parser.add_argument(
        "--targets", action="store_true", help="check the targets; exit 1 on a miss"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repeats per measurement (best kept)"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the other clients")
    parser.add_argument(
        "--url",
        default=None,
        help="a loopback Faktory server, which the suite FLUSHes (default: FAKTORY_URL)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        metavar="LIST",
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: redraw the chart and rewrite the page from the last run",
    )
    args = parser.parse_args(argv)
    if args.render:
        if not LATEST.is_file():
            parser.error(f"--render: no results to render ({LATEST} is missing)")
        results = Results.from_json(LATEST.read_text())
        write_page(results)
        return _verdict(args, results)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section {sorted(unknown)[0]!r}")
    if args.no_write:
        # Print only: even the server's and workers' logs go to a directory that vanishes.
        with tempfile.TemporaryDirectory(prefix="kaffi-bench-") as tmp:
            return _run(args, Path(tmp))
    return _run(args, RESULTS_DIR)


def _run(args: argparse.Namespace, log_dir: Path) -> int:
    sections = set(args.only.split(","))
    sizes = QUICK if args.quick else FULL
    repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))
    url = args.url or os.environ.get("FAKTORY_URL")
    results = Results()

    peers: list[Peer] = []
    if not args.no_peers:
        if not args.quick:
            results.skipped += install(log)
        peers = available_peers()
        log(f"peers: {', '.join(p.name for p in peers) or 'none installed'}")

    server: ServerProcess | None = None
    try:
        if url is None:
            log("starting the embedded server in its own process")
            # The quick smoke run: a short empty-FETCH wait, so burst workers leave at
            # once (the ratios of a quick run are not asserted anyway).
            server = ServerProcess(
                log_dir=log_dir, fetch_hold=QUICK_FETCH_HOLD if args.quick else None
            )
            url = server.url
        endpoint = Endpoint.parse(url)
        control = ServerControl(endpoint)
    except (BenchError, OSError) as exc:
        if server is not None:
            server.stop()
        print(f"bench: cannot reach a server: {exc}", file=sys.stderr)
        return 2

    description = (
        "kaffi's embedded server (in memory, in its own process)"
        if server is not None
        else f"{_server_description(control)} at {url}"
    )
    collect_meta(results, quick=args.quick, repeat=repeat, server=description)
    if peers:
        node = _node_version()
        results.meta["peers"] = ", ".join(p.name for p in peers) + f"; node {node}"
    spin = calibrate_spin()
    results.meta["cpu_job"] = f"{spin:,} loops of spin_loops() = about 1 ms"
    log(f"CPU-bound job: {results.meta['cpu_job']}")

    runner = Runner(
        results,
        control,
        url,
        sizes,
        quick=args.quick,
        server_pid=server.pid if server is not None else None,
        log_dir=log_dir,
    )
    try:
        if server is not None and sizes.memory and "memory" in sections:
            runner.memory(server.pid)
        for round_no in range(1, repeat + 1):
            log(f"round {round_no} of {repeat}")
            if "raw" in sections:
                runner.ceilings()
            if "enqueue" in sections:
                runner.kaffi_enqueue()
                runner.peers_enqueue(peers)
            if "drain" in sections:
                runner.kaffi_drains(spin)
                runner.peers_drain(peers)
            if "metrics" in sections:
                runner.metrics_cost()
            if "startup" in sections:
                runner.startups(peers)
    finally:
        control.close()
        if server is not None:
            server.stop()
    results.meta["load_end"] = _load()
    results.meta["date"] += datetime.now(timezone.utc).strftime(" to %H:%M UTC")
    results.meta["load"] = (
        f"load average {results.meta['load_start']} at the start, "
        f"{results.meta['load_end']} at the end, on {os.cpu_count()} cores"
    )

    print()
    print(throughput_table(results))
    print()
    print(gauge_table(results))
    for line in results.skipped:
        print(f"not measured: {line}")

    if not args.no_write:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        LATEST.write_text(results.to_json())
        write_page(results)
    code = _verdict(args, results)
    if runner.own_failures:
        print(
            f"bench: {len(runner.own_failures)} measurement(s) of kaffi or its server failed",
            file=sys.stderr,
        )
        return 1
    return code


def write_page(results: Results) -> None:
    """The chart and ``docs/benchmarks.md`` (with ``bench/notes.md``) from ``results``."""
    problem = _draw_chart(results, CHART)
    shown = Results(
        throughputs=results.throughputs,
        gauges=results.gauges,
        meta=results.meta,
        skipped=[*results.skipped, *([problem] if problem else [])],
    )
    chart = None if problem else CHART.relative_to(PAGE.parent).as_posix()
    notes = NOTES.read_text() if NOTES.is_file() else ""
    PAGE.write_text(render_page(shown, chart=chart, notes=notes))
    log(f"wrote {PAGE.relative_to(REPO_ROOT)}" + ("" if problem else f" and {chart}"))


def _verdict(args: argparse.Namespace, results: Results) -> int:
    if args.targets:
        verdicts = check_targets(results)
        print()
        print(targets_table(verdicts))
        if args.quick or results.meta.get("mode", "").startswith("quick"):
            print("(quick mode: small N, targets are shown but not asserted)")
        elif any(v.holds is False for v in verdicts):
            return 1
    return 0
