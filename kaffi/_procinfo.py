"""Facts about the running process that both the worker and the embedded server report.

Only the resident set size for now: a worker sends it in every BEAT (``rss_kb``) and the
embedded server shows its own in INFO (``used_memory_mb``). It lives here, beside
``errors.py`` at the bottom of the package, because reading ``/proc`` is I/O and so
cannot belong to :mod:`kaffi.protocol` (which does none), while the worker and the server
sit on separate branches of the layers and may not import each other.

This module imports nothing from kaffi.
"""

from __future__ import annotations

import os
import sys

__all__ = ["rss_kb"]

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def rss_kb() -> int:
    """This process's resident set size in KiB (Linux's ``/proc``; elsewhere the peak
    RSS from ``getrusage``, the best the standard library offers)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is in bytes on macOS and in KiB on Linux and the BSDs.
        return peak // 1024 if sys.platform == "darwin" else peak
