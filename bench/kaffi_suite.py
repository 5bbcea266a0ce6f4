"""kaffi under measurement: its client and tasks in this process, its worker as a process.

The enqueue measurements run here, in the harness process (the server is another
process, so they do not share a GIL with it); each connects first and starts the clock
after, as every peer driver does. The worker runs as ``python -m kaffi worker
bench.tasks:app`` exactly as a user would start it, with its default logging, so its
start-up, memory and speed are what a user gets.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, BenchError, Throughput, child_env
from bench.names import (
    KAFFI_ASYNC_CLIENT,
    KAFFI_BULK,
    KAFFI_DELAY,
    KAFFI_DELAY_ASYNC,
    KAFFI_DELAY_MANY,
    KAFFI_PUSH,
    OP_ASYNC,
    OP_BULK,
    OP_SINGLE,
    OP_THREADS,
)

__all__ = [
    "ASYNC_IN_FLIGHT",
    "THREADS",
    "async_client_push",
    "delay_async",
    "delay_many",
    "delay_single",
    "delay_threads",
    "push_bulk",
    "push_single",
    "worker_spawner",
]

THREADS = 8
ASYNC_IN_FLIGHT = 50
_NOOP: dict[str, Any] = {"jobtype": "noop", "args": []}


def _app(url: str, **options: Any) -> tuple[Any, Any]:
    """A fresh App on ``url`` with a ``noop`` task (kept apart from bench.tasks, whose App
    reads FAKTORY_URL like any worker's)."""
    from kaffi import App

    app = App(url, **options)

    @app.task
    def noop() -> None:
        """The job the enqueue benchmarks push."""

    return app, noop


def delay_single(url: str, n: int) -> Throughput:
    app, noop = _app(url)
    try:
        app.client.connect()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            noop.delay()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        app.close()
    return Throughput(OP_SINGLE, KAFFI_DELAY, n, elapsed, client_cpu=cpu)


def push_single(url: str, n: int) -> Throughput:
    from kaffi import Client

    with Client(url) as client:
        client.connect()
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            client.push(_NOOP)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Throughput(OP_SINGLE, KAFFI_PUSH, n, elapsed, client_cpu=cpu)


def delay_many(url: str, n: int) -> Throughput:
    app, noop = _app(url)
    try:
        app.client.connect()
        start, cpu = time.perf_counter(), time.process_time()
        rejected = noop.delay_many([()] * n)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        app.close()
    if rejected:
        raise BenchError(f".delay_many() had {len(rejected)} jobs refused: {rejected[0]!r:.200}")
    return Throughput(OP_BULK, KAFFI_DELAY_MANY, n, elapsed, client_cpu=cpu)


def push_bulk(url: str, n: int) -> Throughput:
    from kaffi import Client

    with Client(url) as client:
        client.connect()
        start, cpu = time.perf_counter(), time.process_time()
        rejected = client.push_bulk(dict(_NOOP) for _ in range(n))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if rejected:
        raise BenchError(f"push_bulk had {len(rejected)} jobs refused: {rejected[0]!r:.200}")
    return Throughput(OP_BULK, KAFFI_BULK, n, elapsed, client_cpu=cpu)


def delay_threads(url: str, n: int) -> Throughput:
    """``.delay()`` from 8 threads sharing the App's one thread-safe client."""
    app, noop = _app(url)
    share = [n // THREADS + (1 if i < n % THREADS else 0) for i in range(THREADS)]
    ready = threading.Barrier(THREADS + 1, timeout=60)
    errors: list[BaseException] = []

    def lane(count: int) -> None:
        try:
            ready.wait()
            for _ in range(count):
                noop.delay()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lane, args=(c,), daemon=True) for c in share]
    try:
        app.client.connect()
        for t in threads:
            t.start()
        ready.wait()
        start, cpu = time.perf_counter(), time.process_time()
        for t in threads:
            t.join(300)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        app.close()
    if errors:
        raise BenchError(f".delay() from threads failed: {errors[0]!r}")
    if any(t.is_alive() for t in threads):
        raise BenchError(".delay() from threads did not finish within 300 s")
    return Throughput(OP_THREADS, KAFFI_DELAY, n, elapsed, client_cpu=cpu)


async def _lanes(n: int, push: Callable[[], Any]) -> tuple[float, float]:
    share = [
        n // ASYNC_IN_FLIGHT + (1 if i < n % ASYNC_IN_FLIGHT else 0) for i in range(ASYNC_IN_FLIGHT)
    ]

    async def lane(count: int) -> None:
        for _ in range(count):
            await push()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.wait_for(asyncio.gather(*(lane(c) for c in share)), 300)
    return time.perf_counter() - start, time.process_time() - cpu


def delay_async(url: str, n: int) -> Throughput:
    """``await .delay_async()`` with 50 in flight over a pool of 50 connections."""

    async def run() -> tuple[float, float]:
        app, noop = _app(url, pool_size=ASYNC_IN_FLIGHT)
        try:
            await app.async_client.connect()
            return await _lanes(n, noop.delay_async)
        finally:
            await app.aclose()

    elapsed, cpu = asyncio.run(run())
    return Throughput(OP_ASYNC, KAFFI_DELAY_ASYNC, n, elapsed, client_cpu=cpu)


def async_client_push(url: str, n: int) -> Throughput:
    from kaffi import AsyncClient

    async def run() -> tuple[float, float]:
        async with AsyncClient(url, pool_size=ASYNC_IN_FLIGHT) as client:
            await client.connect()
            return await _lanes(n, lambda: client.push(_NOOP))

    elapsed, cpu = asyncio.run(run())
    return Throughput(OP_ASYNC, KAFFI_ASYNC_CLIENT, n, elapsed, client_cpu=cpu)


def worker_spawner(
    url: str,
    log: Path,
    *,
    processes: int = 1,
    concurrency: int = 20,
    burst: bool = True,
    metrics: bool = False,
) -> Callable[[str], subprocess.Popen[bytes]]:
    """Start ``kaffi worker bench.tasks:app`` on a queue (for :mod:`bench.workers`);
    ``metrics``: with ``--metrics`` (Prometheus, served on a free loopback port)."""

    def spawn(queue: str) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable,
            "-m",
            "kaffi",
            "worker",
            "bench.tasks:app",
            "--url",
            url,
            "--queues",
            queue,
            "--concurrency",
            str(concurrency),
            "--processes",
            str(processes),
        ]
        if burst:
            argv.append("--burst")
        if metrics:
            argv += ["--metrics", "127.0.0.1:0"]
        with log.open("ab") as out:
            return subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=child_env({"FAKTORY_URL": url}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own group: stop_process kills what it leaves
            )

    return spawn
