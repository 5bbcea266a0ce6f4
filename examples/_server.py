"""Shared by the examples: a Faktory server to talk to, and a clock for printing.

Every example runs as it is (``python examples/NAME.py``). With FAKTORY_URL set it uses
that server (a real Faktory, say); otherwise it starts kaffi's embedded server on a free
loopback port, in memory, for as long as the example runs (with the Faktory Enterprise
features when the example asks for them, as ``kaffi server --enterprise`` would), its
empty-FETCH wait shortened so examples end promptly.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

__all__ = ["faktory_url", "stopwatch", "wait_until"]


@contextlib.contextmanager
def faktory_url(*, enterprise: bool = False) -> Iterator[str]:
    """Yield the URL of the server the example should use (``enterprise=True``: an
    embedded server with the Faktory Enterprise features)."""
    url = os.environ.get("FAKTORY_URL")
    if url:
        yield url
        return
    from kaffi.server import EmbeddedServer

    # A FETCH on empty queues waits 0.5 s instead of Faktory's 2 s: a worker that stops
    # (or a --burst worker that ran out of jobs) leaves that much sooner, and an example
    # ends soon after its last line.
    with EmbeddedServer(enterprise=enterprise, fetch_hold=0.5) as server:
        yield server.url


def stopwatch() -> Callable[[str], None]:
    """A ``say(message)`` that prints each line with the seconds since it was made."""
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{time.monotonic() - started:5.1f}s] {message}", flush=True)

    return say


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.05)
