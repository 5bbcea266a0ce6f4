"""Unix signals for worker processes, and the stack dump that SIGTTIN asks for.

What each signal means (the Faktory convention, as the Ruby and Go workers have it):

- ``SIGTERM``, ``SIGINT``: shut down (stop fetching, wait up to the timeout, FAIL what
  is still running, exit 0). A *second* ``SIGTERM`` or ``SIGINT`` of either kind
  (Ctrl-C twice, or SIGTERM then Ctrl-C) skips the wait.
- ``SIGTSTP``: quiet (stop fetching, finish what is held, keep heartbeating).
- ``SIGTTIN``: log the stack of every thread and every asyncio task, to see where a
  stuck worker is stuck.

Handlers are installed on the event loop (``loop.add_signal_handler``), so they run as
ordinary callbacks on the loop and may touch the worker's state freely. This module only
installs and dumps; the worker decides what each signal does.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable

__all__ = ["SignalHandlers", "format_all_stacks", "signal_name"]

log = logging.getLogger("kaffi.worker")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def format_all_stacks(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Every thread's current stack, then every asyncio task's, as one block of text."""
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, '?')} (id {ident})\n")
        out.write("".join(traceback.format_stack(frame)))
    if loop is not None:
        for task in asyncio.all_tasks(loop):
            out.write(f"--- task {task.get_name()} {task.get_coro()!r}\n")
            buf = io.StringIO()
            task.print_stack(limit=30, file=buf)
            out.write(buf.getvalue())
    return out.getvalue()


class SignalHandlers:
    """Installs the worker's handlers on ``loop`` and restores the old ones on removal."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        on_stop: Callable[[int], None],
        on_quiet: Callable[[], None],
        on_dump: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._on_stop = on_stop
        self._on_quiet = on_quiet
        self._on_dump = on_dump
        self._installed: list[int] = []

    def install(self) -> bool:
        """Install in the main thread only (Python delivers signals there); True if done."""
        if threading.current_thread() is not threading.main_thread():
            return False
        wanted: list[tuple[str, Callable[[], None]]] = [
            ("SIGTERM", lambda: self._on_stop(signal.SIGTERM)),
            ("SIGINT", lambda: self._on_stop(signal.SIGINT)),
            ("SIGTSTP", self._on_quiet),
            ("SIGTTIN", self._on_dump),
        ]
        for name, callback in wanted:
            signum = getattr(signal, name, None)
            if signum is None:  # not on this platform (Windows lacks TSTP and TTIN)
                continue
            try:
                self._loop.add_signal_handler(signum, callback)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            self._installed.append(signum)
        return bool(self._installed)

    def remove(self) -> None:
        for signum in self._installed:
            try:
                self._loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
        self._installed.clear()
