"""``python -m bench.server``: kaffi's embedded server alone in a process, for the suite.

Prints the server's URL on one line, then serves until its standard input reaches end of
file, which happens when the harness closes the pipe or dies: a benchmark can never leave
a server behind. In-memory storage, a free loopback port. ``--fetch-hold SECONDS``: how
long a FETCH on empty queues waits (Faktory's 2 s unless given; the quick smoke run
shortens it, so a ``--burst`` worker leaves at once instead of 2 s after its queue
drained).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import argparse

    from kaffi.server import EmbeddedServer

    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("--fetch-hold", type=float, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    options = {} if args.fetch_hold is None else {"fetch_hold": args.fetch_hold}
    with EmbeddedServer(bind="127.0.0.1:0", **options) as server:
        print(server.url, flush=True)
        sys.stdin.buffer.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
