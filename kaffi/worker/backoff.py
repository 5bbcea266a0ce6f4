"""Waits between retries: exponential backoff with full jitter, and the idle FETCH's spread.

Every place on the worker side that tries again after a failure waits through
:class:`Backoff`: a slot reconnecting (an outage included), an ACK/FAIL resent over a
fresh connection, the first connection at start-up and the supervisor restarting a
child. (The heartbeat needs none: a failed BEAT is tried again at the next beat.)

Full jitter: attempt ``n`` (0 for the first retry) waits a uniformly random time in
``[0, min(cap, base * 2**n)]``. The expected wait still doubles, but workers (or slots)
that lost the server at the same moment do not all come back at the same instants, so a
restarted server is not hit by every reconnect at once.

:func:`idle_fetch_delay` spreads the FETCHes of idle slots the same way. Processes started
together (a deploy, ``--processes N``) send their first FETCHes at the same instant; on
empty queues the server holds each for the same ~2 s, so without a pause they would come
back, and FETCH again, in lockstep for as long as the queues stay empty. Each slot waits
a random ``[0, IDLE_FETCH_SPREAD]`` after its first FETCH that found nothing, once, which
desynchronises them for good. The very first FETCH is not delayed (faktory_worker_go
delays it instead): when jobs are waiting, every slot should take one at once, and jobs
of different lengths keep busy slots out of step by themselves.

This module does no I/O and never sleeps; the callers do.
"""

from __future__ import annotations

import random

__all__ = [
    "BACKOFF_CAP",
    "BACKOFF_FIRST",
    "IDLE_FETCH_SPREAD",
    "Backoff",
    "idle_fetch_delay",
    "full_jitter",
]

#: The ceiling of the first retry's wait, and the most any wait can be (reconnects,
#: outage, ACK/FAIL retries).
BACKOFF_FIRST = 0.05
BACKOFF_CAP = 5.0
#: The most a slot waits after its first empty FETCH (seconds): enough to break lockstep
#: between processes started together, too little for anyone to notice.
IDLE_FETCH_SPREAD = 0.1
#: 2**60 times any sensible base already exceeds every cap; a bigger exponent would only
#: overflow the float conversion.
_MAX_EXPONENT = 60


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (0 first):
    ``uniform(0, min(cap, base * 2**attempt))``."""
    ceiling = min(cap, base * 2 ** min(max(attempt, 0), _MAX_EXPONENT))
    return (rng or random).uniform(0.0, ceiling)


class Backoff:
    """Successive full-jitter waits for one thing being retried.

    ``next()`` gives the wait before the next attempt and counts it; ``reset()`` after a
    success starts again from ``base``. ``rng`` is there for tests (a seeded
    :class:`random.Random`); by default the module's shared generator is used.
    """

    __slots__ = ("_rng", "attempt", "base", "cap")

    def __init__(
        self,
        base: float = BACKOFF_FIRST,
        cap: float = BACKOFF_CAP,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.base = base
        self.cap = cap
        #: Waits handed out since the last reset.
        self.attempt = 0
        self._rng = rng

    def ceiling(self) -> float:
        """The most the next wait can be."""
        return float(min(self.cap, self.base * 2 ** min(self.attempt, _MAX_EXPONENT)))

    def next(self) -> float:
        """The wait before the next attempt (random, at most :meth:`ceiling`)."""
        delay = full_jitter(self.attempt, self.base, self.cap, self._rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """The thing worked: the next failure waits as little as the first did."""
        self.attempt = 0


def idle_fetch_delay(spread: float = IDLE_FETCH_SPREAD, rng: random.Random | None = None) -> float:
    """How long a slot waits after its first empty FETCH: uniform in ``[0, spread]``."""
    return (rng or random).uniform(0.0, max(spread, 0.0))
