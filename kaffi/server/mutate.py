"""MUTATE on the server: what ``clear``, ``kill``, ``discard`` and ``requeue`` do to the
retry, scheduled and dead sets, with Faktory's filters (``jids``, ``regexp``, ``jobtype``).

:meth:`kaffi.server.core.ServerCore.mutate` checks the command and calls :func:`apply`;
the moves themselves (to the dead set, back to a queue) are the core's own, so a job
leaves a set here the same way it does on a timer. No I/O; it must never touch queues or
reservations directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kaffi.server import jobs as jobs_mod
from kaffi.server.structures import TimedEntry, TimedSet, glob_to_regex

if TYPE_CHECKING:
    from kaffi.server.core import ServerCore

__all__ = ["apply", "select"]


def apply(core: ServerCore, cmd: str, tset: TimedSet, flt: dict[str, Any] | None) -> None:
    """Run MUTATE ``cmd`` (clear, kill, discard or requeue, already checked by the core)
    on ``tset``, one of ``core``'s retry, scheduled and dead sets."""
    selected = list(tset.entries.values()) if cmd == "clear" else select(tset, flt or {})
    now = core.clock.now()
    for entry in selected:
        if cmd == "kill" and tset is core.dead:
            continue
        tset.remove(entry.rowid)
        if cmd in ("clear", "discard"):
            if core.journal is not None:
                core.journal.delete(entry.rowid)
        elif cmd == "kill":
            queue = str(jobs_mod.decode_job(entry.data).get("queue") or "default")
            core.to_dead(entry.rowid, entry.jid, queue, entry.data, now)
        else:
            # As Faktory: the job goes back to its queue as it was stored.
            core.requeue_entry(entry, touch=False)


def select(tset: TimedSet, flt: dict[str, Any]) -> list[TimedEntry]:
    """The entries of ``tset`` a MUTATE filter picks: ``jids`` alone when given, else
    those matching ``regexp`` (a Redis glob over the JSON) and ``jobtype``."""
    entries = list(tset.entries.values())
    jids = flt.get("jids")
    if jids:
        wanted = set(jids)
        return [e for e in entries if e.jid in wanted]
    regexp = flt.get("regexp")
    if regexp:
        rx = glob_to_regex(regexp)
        entries = [e for e in entries if rx.fullmatch(e.data.decode("utf-8", "replace"))]
    jobtype = flt.get("jobtype")
    if jobtype:
        entries = [e for e in entries if jobs_mod.decode_job(e.data).get("jobtype") == jobtype]
    return entries
