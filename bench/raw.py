"""The raw-protocol ceilings: how fast the server goes with the cheapest possible client.

Each client here is :mod:`kaffi.protocol` for the handshake and pre-built bytes for the
load, so what is measured is the server plus a socket, not any client library:

- pipelined PUSH: every PUSH line written back to back on one connection while a reader
  counts the ``+OK`` replies (one writer thread, one reader);
- PUSH with one round trip each, for scale against the one-at-a-time enqueue figures;
- PUSHB in batches of 1000, one batch per round trip;
- FETCH+ACK over 20 asyncio connections, each ACK written together with the next FETCH;
- the server's RSS with 100,000 small jobs queued (only for a server we started).

These figures are the denominators of the "vs raw" column: a client's share of what the
server itself can take.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from bench.harness import (
    BenchError,
    Deadline,
    Endpoint,
    Gauge,
    ServerControl,
    SyncConn,
    Throughput,
    cpu_seconds,
    noop_jobs,
    rss_mb,
)
from bench.names import (
    OP_RAW_FETCH_ACK,
    OP_RAW_PUSH,
    OP_RAW_PUSH_SEQUENTIAL,
    OP_RAW_PUSHB,
    RAW,
)
from kaffi.protocol import (
    ReplyParser,
    decode_hi,
    decode_ok,
    encode_hello,
    encode_push,
    encode_pushb,
)

__all__ = [
    "CLIENT",
    "OP_FETCH_ACK",
    "OP_PUSH_PIPELINED",
    "OP_PUSH_SEQUENTIAL",
    "OP_PUSHB",
    "MEMORY_METRIC",
    "fetch_ack",
    "pushb",
    "push_pipelined",
    "push_sequential",
    "queued_memory",
]

CLIENT = RAW
OP_PUSH_PIPELINED = OP_RAW_PUSH
OP_PUSH_SEQUENTIAL = OP_RAW_PUSH_SEQUENTIAL
OP_PUSHB = OP_RAW_PUSHB
OP_FETCH_ACK = OP_RAW_FETCH_ACK
MEMORY_METRIC = "server RSS with 100,000 queued jobs"


def push_pipelined(endpoint: Endpoint, n: int, *, timeout: float = 120.0) -> Throughput:
    data = b"".join(encode_push(job) for job in noop_jobs(n))
    expected = len(b"+OK\r\n") * n
    conn = SyncConn(endpoint, timeout=timeout)
    failures: list[BaseException] = []

    def write() -> None:
        try:
            conn.sock.sendall(data)
        except OSError as exc:
            failures.append(exc)

    writer = threading.Thread(target=write, name="bench-raw-writer", daemon=True)
    deadline = Deadline(timeout)
    received = 0
    try:
        start, cpu = time.perf_counter(), time.process_time()
        writer.start()
        while received < expected:
            if deadline.expired or failures:
                raise BenchError(f"pipelined PUSH stalled after {received // 5} replies")
            chunk = conn.sock.recv(262144)
            if not chunk:
                raise BenchError("the server closed the connection during pipelined PUSH")
            if b"-" in chunk:
                raise BenchError(f"the server refused a pipelined PUSH: {chunk[:200]!r}")
            received += len(chunk)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        writer.join(timeout)
        conn.close()
    return Throughput(OP_PUSH_PIPELINED, CLIENT, n, elapsed, client_cpu=cpu)


def push_sequential(endpoint: Endpoint, n: int) -> Throughput:
    lines = [encode_push(job) for job in noop_jobs(n)]
    conn = SyncConn(endpoint)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for line in lines:
            decode_ok(conn.request(line), "PUSH")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        conn.close()
    return Throughput(OP_PUSH_SEQUENTIAL, CLIENT, n, elapsed, client_cpu=cpu)


def pushb(endpoint: Endpoint, n: int, *, batch: int = 1000) -> Throughput:
    jobs = list(noop_jobs(n))
    lines = [encode_pushb(jobs[i : i + batch]) for i in range(0, n, batch)]
    conn = SyncConn(endpoint, timeout=60.0)
    try:
        start, cpu = time.perf_counter(), time.process_time()
        for line in lines:
            reply = conn.request(line)
            # All taken is the 2-byte body "{}"; anything else names refused jobs.
            if getattr(reply, "data", None) != b"{}":
                raise BenchError(f"PUSHB answered {reply!r:.200}")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        conn.close()
    return Throughput(OP_PUSHB, CLIENT, n, elapsed, client_cpu=cpu)


def fetch_ack(
    endpoint: Endpoint,
    control: ServerControl,
    n: int,
    *,
    connections: int = 20,
    queue: str = "raw-fetch",
    timeout: float = 120.0,
    server_pid: int | None = None,
) -> Throughput:
    """``n`` jobs queued first, then fetched and acknowledged by ``connections`` asyncio
    connections sharing one wid; each claims a ticket before a FETCH, so exactly ``n``
    FETCHes are sent and none blocks on an empty queue."""
    control.fill(n, queue=queue)
    server_before = cpu_seconds(server_pid) if server_pid else None
    cpu = time.process_time()
    elapsed = asyncio.run(_fetch_ack(endpoint, n, connections, queue, timeout))
    cpu = time.process_time() - cpu
    server_after = cpu_seconds(server_pid) if server_pid else None
    server_cpu = None
    if server_before is not None and server_after is not None:
        server_cpu = server_after - server_before
    size, working = control.pending(queue)
    if size or working:
        raise BenchError(f"FETCH+ACK left {size} jobs queued and {working} reserved")
    return Throughput(OP_FETCH_ACK, CLIENT, n, elapsed, client_cpu=cpu, server_cpu=server_cpu)


async def _fetch_ack(
    endpoint: Endpoint, n: int, connections: int, queue: str, timeout: float
) -> float:
    wid = f"bench-raw-{os.getpid()}"
    streams = await asyncio.wait_for(
        asyncio.gather(*(_open(endpoint, wid) for _ in range(connections))), timeout
    )
    tickets = [0]
    fetch = b"FETCH " + queue.encode() + b"\r\n"

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        jid: bytes | None = None
        while tickets[0] < n:
            tickets[0] += 1
            if jid is None:
                writer.write(fetch)
            else:
                writer.write(b'ACK {"jid":"' + jid + b'"}\r\n' + fetch)
                await _expect_ok(reader)
            header = await reader.readline()
            if not header.startswith(b"$"):
                raise BenchError(f"FETCH answered {header!r:.200}")
            length = int(header[1:])
            if length < 0:
                raise BenchError("FETCH found the queue empty before every job was fetched")
            body = await reader.readexactly(length + 2)
            start = body.find(b'"jid":"') + 7
            jid = body[start : body.find(b'"', start)]
        if jid is not None:
            writer.write(b'ACK {"jid":"' + jid + b'"}\r\n')
            await _expect_ok(reader)

    try:
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(run(r, w) for r, w in streams)), timeout)
        return time.perf_counter() - start
    finally:
        for _, writer in streams:
            writer.write(b"END\r\n")
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in streams), return_exceptions=True)


async def _open(endpoint: Endpoint, wid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    parser = ReplyParser()
    parser.feed(await reader.readline())
    hi = parser.next_reply()
    if hi is None:
        raise BenchError("the server's greeting was cut short")
    writer.write(
        encode_hello(
            decode_hi(hi),
            hostname="bench",
            wid=wid,
            pid=os.getpid(),
            labels=["bench"],
            password=endpoint.password,
        )
    )
    await _expect_ok(reader)
    return reader, writer


async def _expect_ok(reader: asyncio.StreamReader) -> None:
    line = await reader.readline()
    if line != b"+OK\r\n":
        raise BenchError(f"expected +OK, got {line!r:.200}")


def queued_memory(control: ServerControl, server_pid: int, n: int = 100_000) -> Gauge:
    """The server's RSS once ``n`` small jobs wait in one queue (then flushed again)."""
    control.flush()
    before = rss_mb(server_pid)
    control.fill(n, queue="raw-memory")
    after = rss_mb(server_pid)
    size, _ = control.pending("raw-memory")
    control.flush()
    if before is None or after is None:
        raise BenchError("cannot read the server's RSS (no /proc on this system)")
    if size != n:
        raise BenchError(f"expected {n} queued jobs, INFO counts {size}")
    return Gauge(
        MEMORY_METRIC,
        "kaffi server",
        after,
        "MB",
        note=f"{before:.0f} MB before the jobs were queued",
    )
