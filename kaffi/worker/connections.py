"""The worker's connections to its server: opening them within ``pool_size``, and outages.

- :class:`Connector` opens every connection the worker holds (one per slot, one for the
  heartbeat), each HELLO'd with the worker's wid and labels, and counts them against
  ``pool_size`` (:class:`ConnectionBudget`): opening one more than that waits until one
  is closed. Everything it opened goes back through :meth:`Connector.close`.
- Start-up (:meth:`Connector.first_connection`): the heartbeat connection is opened
  before any slot exists; attempts are repeated with backoff (:mod:`kaffi.worker.backoff`)
  for up to the connect timeout, then the server is declared unreachable
  (``ConnectError`` naming it, never its password). A refused password is raised at once.
- Once running, a lost server is an outage to ride out: every connect tells
  :class:`Outage` how it went, so the outage is logged once for the whole worker (a
  warning when a connect first fails, a reminder every :data:`OUTAGE_REMINDER_SECONDS`
  while it lasts, an info line when a connect succeeds again), not once per slot.

This module must not import the rest of the worker except :mod:`kaffi.worker.backoff`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING

from kaffi.errors import (
    UNREACHABLE_HINT,
    ConnectError,
    ConnectTimeout,
    KaffiError,
    RemoteProtocolError,
    TransportError,
)
from kaffi.worker.backoff import BACKOFF_CAP, BACKOFF_FIRST, Backoff

if TYPE_CHECKING:
    from kaffi.client.aio import AsyncConnection
    from kaffi.client.config import ConnectionSettings

__all__ = [
    "OUTAGE_REMINDER_SECONDS",
    "STARTUP_BACKOFF_CAP",
    "ConnectionBudget",
    "Connector",
    "Outage",
]

log = logging.getLogger("kaffi.worker")

#: While the server stays unreachable, the outage is logged again at most this often.
OUTAGE_REMINDER_SECONDS = 30.0
#: At start-up, the wait between attempts at the first connection grows up to this.
STARTUP_BACKOFF_CAP = 1.0


class Outage:
    """Whether the worker reaches its server, so an outage is logged once per worker, not
    once per slot and attempt.

    Every connect (slots, heartbeat, report retries) tells it how it went: the first
    failure logs a warning, further failures a reminder at most every
    :data:`OUTAGE_REMINDER_SECONDS`, and the first success after that an info line. A
    failed connect that began before the server came back is a leftover of the outage
    that just ended, not a new one. No I/O; ``clock`` is there for tests.
    """

    __slots__ = ("_clock", "_reminded", "_up_since", "down_since", "failures", "url", "wid")

    def __init__(self, wid: str, url: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.wid = wid
        self.url = url
        self._clock = clock
        #: When the first connect of the current outage failed; None while reachable.
        self.down_since: float | None = None
        #: Failed connects in the current outage.
        self.failures = 0
        self._reminded = 0.0
        self._up_since = float("-inf")

    def now(self) -> float:
        """The clock the outage is measured with (a connect attempt notes its start)."""
        return self._clock()

    def connect_failed(self, exc: BaseException, attempt_started: float) -> None:
        """A connect that began at ``attempt_started`` failed with ``exc``."""
        now = self._clock()
        if self.down_since is None:
            if attempt_started < self._up_since:
                log.debug(
                    "worker %s: a connect from before the server came back failed: %s",
                    self.wid,
                    exc,
                )
                return
            self.down_since = self._reminded = now
            self.failures = 1
            log.warning(
                "worker %s: cannot reach the Faktory server at %s (%s); jobs wait while the"
                " worker reconnects by itself, backing off up to %gs",
                self.wid,
                self.url,
                exc,
                BACKOFF_CAP,
            )
            return
        self.failures += 1
        if now - self._reminded >= OUTAGE_REMINDER_SECONDS:
            self._reminded = now
            log.warning(
                "worker %s: the Faktory server at %s is still unreachable after %.0fs"
                " (%d failed connects): %s",
                self.wid,
                self.url,
                now - self.down_since,
                self.failures,
                exc,
            )
        else:
            log.debug("worker %s: connect failed again: %s", self.wid, exc)

    def connected(self) -> None:
        """A connect succeeded: ends the outage, if there was one."""
        if self.down_since is None:
            return
        now = self._clock()
        log.info(
            "worker %s: the Faktory server at %s is back after %.1fs; carrying on",
            self.wid,
            self.url,
            now - self.down_since,
        )
        self.down_since = None
        self.failures = 0
        self._up_since = now


class ConnectionBudget:
    """``pool_size`` made real: at most ``size`` connections held at once.

    A connection takes a permit before it is opened (waiting while every permit is
    taken) and gives it back when it is closed or fails to open. ``held`` and ``peak``
    say how many are held now and at most so far. Built on the worker's loop.
    """

    __slots__ = ("_permits", "held", "peak", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._permits = asyncio.Semaphore(size)
        self.held = 0
        self.peak = 0

    async def take(self) -> None:
        """Wait for a permit and take it."""
        await self._permits.acquire()
        self.held += 1
        self.peak = max(self.peak, self.held)

    def give_back(self) -> None:
        """Return a permit taken with :meth:`take`."""
        self.held -= 1
        self._permits.release()


@dataclass(eq=False)
class Connector:
    """Opens and closes the worker's connections: HELLO with its identity, within its
    :class:`ConnectionBudget`, reporting to its :class:`Outage`."""

    _: KW_ONLY
    wid: str
    labels: tuple[str, ...]
    hostname: str
    #: Where the server is (read at each connect: the worker resolves it late).
    settings: Callable[[], ConnectionSettings]
    pool_size: int
    #: Told whether each connect once running succeeded (the worker's WorkerEvents).
    on_reachable: Callable[[bool], None] | None = None
    _budget: ConnectionBudget | None = field(default=None, init=False)
    _outage: Outage | None = field(default=None, init=False)
    #: The connections opened and not yet closed (each holds a permit).
    _held: set[AsyncConnection] = field(default_factory=set, init=False)

    @property
    def budget(self) -> ConnectionBudget:
        """The permits (created on first use, on the worker's loop)."""
        if self._budget is None:
            self._budget = ConnectionBudget(self.pool_size)
        return self._budget

    @property
    def outage(self) -> Outage:
        """The outage log shared by every connection of this worker."""
        if self._outage is None:
            self._outage = Outage(self.wid, self.settings().url)
        return self._outage

    async def connect(self) -> AsyncConnection:
        """A new connection, HELLO'd with this worker's wid and labels, once a permit is
        free. Errors are raised as they come (no outage bookkeeping: see :meth:`open`)."""
        from kaffi.client.aio import AsyncConnection

        budget = self.budget
        await budget.take()
        try:
            conn = await AsyncConnection.open(
                self.settings(),
                wid=self.wid,
                labels=self.labels,
                hostname=self.hostname,
                pid=os.getpid(),
            )
        except BaseException:
            budget.give_back()
            raise
        self._held.add(conn)
        return conn

    async def open(self) -> AsyncConnection:
        """:meth:`connect`, once running: the outcome feeds the outage log."""
        outage = self.outage
        attempt_started = outage.now()
        try:
            conn = await self.connect()
        except (TransportError, RemoteProtocolError) as exc:
            outage.connect_failed(exc, attempt_started)
            if self.on_reachable is not None:
                self.on_reachable(False)
            raise
        outage.connected()
        if self.on_reachable is not None:
            self.on_reachable(True)
        return conn

    async def close(self, conn: AsyncConnection | None) -> None:
        """END and close ``conn`` (best effort) and give its permit back; None is fine."""
        if conn is None:
            return
        try:
            await conn.close()
        except (KaffiError, OSError) as exc:
            log.debug("closing %r: %s", conn, exc)
        finally:
            if conn in self._held:
                self._held.discard(conn)
                self.budget.give_back()

    async def first_connection(
        self, stop: asyncio.Event, stopping: Callable[[], bool]
    ) -> AsyncConnection | None:
        """Start-up: open the heartbeat connection (its HELLO registers the wid), trying
        for up to the connect timeout. The connection once open; None when a stop came
        first (``stop`` set, or ``stopping()`` true).

        Raises ConnectError (ConnectTimeout if the server never answered) naming the
        server, without its password, when every attempt failed; a refused password or
        another ``-ERR`` to HELLO is raised as it is, at once: retrying cannot fix it.
        """
        loop = asyncio.get_running_loop()
        settings = self.settings()
        window = settings.connect_timeout
        deadline = loop.time() + window
        backoff = Backoff(BACKOFF_FIRST, STARTUP_BACKOFF_CAP)
        attempts = 0
        while True:
            if stopping():
                return None
            attempts += 1
            remaining = max(deadline - loop.time(), 0.001)
            opening = asyncio.ensure_future(asyncio.wait_for(self.connect(), remaining))
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait((opening, stopped), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
                if not opening.done():
                    opening.cancel()
                await asyncio.gather(opening, stopped, return_exceptions=True)
            if opening.cancelled():
                return None  # the stop won the race
            try:
                conn = opening.result()
            except asyncio.TimeoutError:
                error: KaffiError = ConnectTimeout(
                    f"no answer within the connect timeout of {window:g}s"
                )
            except (TransportError, RemoteProtocolError) as exc:
                error = exc
            else:
                if stopping():
                    await self.close(conn)
                    return None
                return conn
            if stopping():
                return None
            wait = min(backoff.next(), deadline - loop.time())
            if wait <= 0:
                raise _unreachable(settings.url, error, attempts, window)
            if attempts == 1:
                log.info(
                    "worker %s: cannot reach the Faktory server at %s yet (%s); trying for"
                    " up to %gs",
                    self.wid,
                    settings.url,
                    _reason(settings.url, error),
                    window,
                )
            try:
                await asyncio.wait_for(stop.wait(), wait)
            except asyncio.TimeoutError:
                pass


def _reason(url: str, error: KaffiError) -> str:
    """``error``'s text for a message that already names the server at ``url`` (and
    gives the hint itself, last)."""
    return (
        str(error)
        .removeprefix(f"could not connect to {url}: ")
        .removesuffix(f"; {UNREACHABLE_HINT}")
    )


def _unreachable(url: str, error: KaffiError, attempts: int, window: float) -> ConnectError:
    """The start-up error: names the server (never its password) and the last failure."""
    tried = f"{attempts} attempt{'s' if attempts != 1 else ''} in {window:g}s"
    message = (
        f"cannot reach the Faktory server at {url}: {_reason(url, error)} ({tried});"
        f" {UNREACHABLE_HINT}"
    )
    if isinstance(error, ConnectTimeout):
        return ConnectTimeout(message)
    return ConnectError(message)
