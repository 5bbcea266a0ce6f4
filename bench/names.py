"""The names of every operation and client in the suite, and which ceiling each is read
against. One place, so the measurements, the table, the chart and the target checks agree.
"""

from __future__ import annotations

__all__ = [
    "CEILING_OF",
    "CLIENT_ORDER",
    "KAFFI",
    "KAFFI_ASYNC_CLIENT",
    "KAFFI_BULK",
    "KAFFI_DELAY",
    "KAFFI_DELAY_ASYNC",
    "KAFFI_DELAY_MANY",
    "KAFFI_PUSH",
    "KAFFI_WORKER",
    "KAFFI_WORKER_2",
    "KAFFI_WORKER_ASYNC",
    "KAFFI_WORKER_METRICS",
    "METRICS_RATIO_METRIC",
    "OPERATION_ORDER",
    "OP_ASYNC",
    "OP_BULK",
    "OP_CPU_1",
    "OP_CPU_2",
    "OP_DRAIN_1",
    "OP_DRAIN_2",
    "OP_RAW_FETCH_ACK",
    "OP_RAW_PUSH",
    "OP_RAW_PUSHB",
    "OP_RAW_PUSH_SEQUENTIAL",
    "OP_SINGLE",
    "OP_THREADS",
    "RAW",
]

OP_SINGLE = "enqueue one at a time"
OP_BULK = "enqueue in bulk (batches of 1000)"
OP_THREADS = "enqueue from 8 threads"
OP_ASYNC = "enqueue from asyncio, 50 in flight"
OP_DRAIN_1 = "drain no-op jobs, 1 process, concurrency 20"
OP_DRAIN_2 = "drain no-op jobs, 2 processes, concurrency 20"
OP_CPU_1 = "drain 1 ms CPU-bound jobs, 1 process"
OP_CPU_2 = "drain 1 ms CPU-bound jobs, 2 processes"
OP_RAW_PUSH = "raw: PUSH, pipelined"
OP_RAW_PUSH_SEQUENTIAL = "raw: PUSH, one round trip each"
OP_RAW_PUSHB = "raw: PUSHB, batches of 1000"
OP_RAW_FETCH_ACK = "raw: FETCH+ACK, 20 asyncio connections"

OPERATION_ORDER = (
    OP_SINGLE,
    OP_BULK,
    OP_THREADS,
    OP_ASYNC,
    OP_DRAIN_1,
    OP_DRAIN_2,
    OP_CPU_1,
    OP_CPU_2,
    OP_RAW_PUSH,
    OP_RAW_PUSH_SEQUENTIAL,
    OP_RAW_PUSHB,
    OP_RAW_FETCH_ACK,
)

#: The raw ceiling each client operation is a share of.
CEILING_OF = {
    OP_SINGLE: OP_RAW_PUSH,
    OP_THREADS: OP_RAW_PUSH,
    OP_ASYNC: OP_RAW_PUSH,
    OP_BULK: OP_RAW_PUSHB,
    OP_DRAIN_1: OP_RAW_FETCH_ACK,
    OP_DRAIN_2: OP_RAW_FETCH_ACK,
}

KAFFI = "kaffi"
KAFFI_DELAY = "kaffi .delay()"
KAFFI_PUSH = "kaffi client.push"
KAFFI_DELAY_MANY = "kaffi .delay_many()"
KAFFI_BULK = "kaffi client.push_bulk"
KAFFI_DELAY_ASYNC = "kaffi .delay_async()"
KAFFI_ASYNC_CLIENT = "kaffi AsyncClient.push"
KAFFI_WORKER = "kaffi worker"
KAFFI_WORKER_ASYNC = "kaffi worker, async def job"
KAFFI_WORKER_2 = "kaffi worker --processes 2"
KAFFI_WORKER_METRICS = "kaffi worker --metrics"
#: The gauge of ``--only metrics``: drain rate with ``--metrics`` over without, the median
#: of paired blocks (:func:`bench.workers.paired_drains`).
METRICS_RATIO_METRIC = "drain with --metrics / without"
RAW = "raw protocol"

#: Rows within an operation: kaffi first, then the peers, then the ceiling.
CLIENT_ORDER = (
    KAFFI_DELAY,
    KAFFI_PUSH,
    KAFFI_DELAY_MANY,
    KAFFI_BULK,
    KAFFI_DELAY_ASYNC,
    KAFFI_ASYNC_CLIENT,
    KAFFI_WORKER,
    KAFFI_WORKER_METRICS,
    KAFFI_WORKER_ASYNC,
    "kaffi server",
)
