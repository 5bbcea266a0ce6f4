"""Drives the PyPI ``faktory`` package (1.0.0) for the benchmark suite.

``python -m bench.drivers.pypi_faktory OP N QUEUE`` in the bench-only virtualenv, with
``FAKTORY_URL`` set. OP: ``push`` (one ``client.queue`` at a time), ``push_threads`` (8
threads, a connection each: its client is one socket, not a pool) or ``work`` (a worker at
concurrency 20 with threads, until SIGTERM). The package has no bulk push and no asyncio.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from bench.drivers.common import noop, parse_args, report, run_threads, start_clock


def main() -> int:
    args = parse_args()
    faktory = importlib.import_module("faktory")
    url = os.environ["FAKTORY_URL"]

    def pusher() -> Callable[[int], None]:
        client = faktory.Client(url)
        client.connect()

        def push(count: int) -> None:
            for _ in range(count):
                # retry explicit, as every client in the suite sends it (see REFERENCE.md).
                client.queue("noop", args=(), queue=args.queue, retry=25)

        return push

    if args.op == "push":
        push = pusher()
        started = start_clock()
        push(args.n)
        report(args.n, started)
    elif args.op == "push_threads":
        run_threads(pusher, args.n)
    elif args.op == "work":
        worker = faktory.Worker(faktory=url, queues=[args.queue], concurrency=20, use_threads=True)
        worker.register("noop", noop)
        worker.run()
    else:
        print(f"unknown operation {args.op!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
