"""The INFO document of the embedded server, in Faktory 1.10.0's shape, read from a
:class:`~kaffi.server.core.ServerCore`.

Key order matters: Faktory encodes Go maps (sorted keys) and structs (declared order), and
the transcript replay compares the bytes, so the dicts below are built in that order. It
reads the core and the process's RSS; it changes nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kaffi._procinfo import rss_kb
from kaffi.server.jobs import time_string

if TYPE_CHECKING:
    from kaffi.server.core import ServerCore

__all__ = ["task_info", "info_document"]


def task_info(core: ServerCore) -> dict[str, dict[str, int | float]]:
    """INFO's ``tasks`` block: Faktory 1.10.0's keys in its order (Go sorts map keys),
    each ``size`` being the set's size, the reserved jobs (Busy) or the registered
    worker processes (Workers)."""
    scanners = core.scanner_stats
    return {
        "Busy": {"reaped": core.reaped_reservations, "size": len(core.reservations)},
        "Dead": scanners["Dead"].info(len(core.dead)),
        "Retries": scanners["Retries"].info(len(core.retries)),
        "Scheduled": scanners["Scheduled"].info(len(core.scheduled)),
        "Workers": {"reaped": core.reaped_workers, "size": len(core.workers)},
    }


def info_document(core: ServerCore) -> dict[str, Any]:
    """The INFO document, with the same keys in the same order as Faktory 1.10.0."""
    queues = {name: len(core.queues[name].jobs) for name in sorted(core.queues)}
    now = core.clock.now_ns()
    info: dict[str, Any] = {
        "now": time_string(now),
        "server_utc_time": time.strftime("%H:%M:%S UTC", time.gmtime(now // 1_000_000_000)),
        "faktory": {
            "queues": queues,
            "sets": {
                "dead": len(core.dead),
                "retries": len(core.retries),
                "scheduled": len(core.scheduled),
                "working": len(core.reservations),
            },
            "tasks": task_info(core),
            "total_failures": core.total_failures,
            "total_processed": core.total_processed,
            "total_enqueued": sum(queues.values()),
            "total_queues": len(queues),
        },
        "server": {
            "description": "kaffi embedded Faktory-compatible server",
            "faktory_version": "1.10.0",
            "uptime": int(time.time() - core.started),
            "connections": core.connections,
            "command_count": core.command_count,
            "used_memory_mb": rss_kb() // 1024,
        },
    }
    if core.enterprise is not None:
        # Clients tell Enterprise by "Enterprise" in the description (ENTERPRISE.md 0).
        info["server"]["description"] = "kaffi embedded Faktory Enterprise-compatible server"
        info["faktory"]["total_expired"] = core.enterprise.expired
    if core.throttles is not None:
        info["faktory"]["throttles"] = core.throttles.info(core.clock.now())
    return info
