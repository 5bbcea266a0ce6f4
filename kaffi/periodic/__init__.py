"""Periodic jobs: schedules registered with :meth:`kaffi.App.periodic`, pushed ahead of
time by ``kaffi beat APP`` or ``kaffi worker APP --beat``, once per occurrence however
many schedulers run.

- :mod:`kaffi.periodic.schedule`: what a schedule is and when it fires, the deterministic
  jid and payload of each occurrence, what a tick pushes or skips; no I/O.
- :mod:`kaffi.periodic.runner`: :class:`Beat`, the loop that reads the clock and pushes
  through ``app.client``.

This package may import the protocol models and the App's public surface; the worker and
the command line import it, never the other way round.
"""

from __future__ import annotations

from kaffi.periodic.runner import Beat, BeatStats, upcoming
from kaffi.periodic.schedule import (
    DEFAULT_LOOKAHEAD,
    DEFAULT_MARGIN,
    CronTrigger,
    EveryTrigger,
    Plan,
    Schedule,
    plan,
)

__all__ = [
    "DEFAULT_LOOKAHEAD",
    "DEFAULT_MARGIN",
    "Beat",
    "BeatStats",
    "CronTrigger",
    "EveryTrigger",
    "Plan",
    "Schedule",
    "plan",
    "upcoming",
]
