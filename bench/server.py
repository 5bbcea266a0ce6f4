"""``python -m bench.server``: kaffi's embedded server alone in a process, for the suite.

Prints the server's URL on one line, then serves until its standard input reaches end of
file, which happens when the harness closes the pipe or dies: a benchmark can never leave
a server behind. In-memory storage, a free loopback port.
"""

from __future__ import annotations

import sys


def main() -> int:
    from kaffi.server import EmbeddedServer

    with EmbeddedServer(bind="127.0.0.1:0") as server:
        print(server.url, flush=True)
        sys.stdin.buffer.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
