"""Drives the ``pyfaktory`` package (0.2.13) for the benchmark suite.

``python -m bench.drivers.pyfaktory_driver OP N QUEUE`` in the bench-only virtualenv, with
``FAKTORY_URL`` set. OP: ``push`` (one ``producer.push`` at a time), ``push_bulk``
(``producer.push_bulk`` in batches of 1000), ``push_threads`` (8 threads, a client each) or
``work`` (a consumer at concurrency 20, until SIGTERM; pyfaktory runs jobs in a pool of
processes, so concurrency 20 means 20 processes). The package has no asyncio API.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from bench.drivers.common import noop, parse_args, report, run_threads, start_clock


def main() -> int:
    args = parse_args()
    pf = importlib.import_module("pyfaktory")
    url = os.environ["FAKTORY_URL"]

    def connect(role: str) -> object:
        client = pf.Client(faktory_url=url, role=role)
        client.connect()
        return client

    def pusher() -> Callable[[int], None]:
        producer = pf.Producer(client=connect("producer"))

        def push(count: int) -> None:
            for _ in range(count):
                producer.push(pf.Job(jobtype="noop", args=[], queue=args.queue))

        return push

    if args.op == "push":
        push = pusher()
        started = start_clock()
        push(args.n)
        report(args.n, started)
    elif args.op == "push_bulk":
        producer = pf.Producer(client=connect("producer"))
        started = start_clock()
        for done in range(0, args.n, 1000):
            batch = [
                pf.Job(jobtype="noop", args=[], queue=args.queue)
                for _ in range(min(1000, args.n - done))
            ]
            refused = producer.push_bulk(batch)
            if refused:
                raise RuntimeError(f"the server refused jobs: {str(refused)[:200]}")
        report(args.n, started)
    elif args.op == "push_threads":
        run_threads(pusher, args.n)
    elif args.op == "work":
        consumer = pf.Consumer(
            client=connect("consumer"), queues=[args.queue], priority="strict", concurrency=20
        )
        consumer.register("noop", noop)
        consumer.run()
    else:
        print(f"unknown operation {args.op!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
