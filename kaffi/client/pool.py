"""Connection pools: :class:`ConnectionPool` (threads) and :class:`AsyncConnectionPool` (asyncio).

The rules both follow:

- Between 1 and ``size`` connections, opened lazily, the most recently used handed out
  first (it is the one least likely to have been closed by the server).
- Borrow with ``with pool.connection() as conn`` (``async with`` for asyncio), or
  :meth:`acquire`/:meth:`release` on hot paths. A :class:`~kaffi.errors.ServerError`
  (``-ERR``) returns the connection to the pool; a transport or protocol error, or any
  interruption that left the connection ``broken``, throws it away.
- An idle connection the server closed (a restart) is noticed before it is handed out,
  so only commands in flight at the time of a restart can fail. Looking costs a system
  call, so it is done only for connections idle longer than :data:`STALE_CHECK_AFTER`,
  or when the borrower asks (``verify=True``: the client does for commands it never
  retries, such as FETCH). A command that does run on a connection closed moments ago
  fails before any reply byte, which the client's retry-once rule covers.
- Borrowing waits at most ``timeout`` seconds for a free connection, then raises
  :class:`~kaffi.errors.PoolTimeout`.
- After ``os.fork()`` the child forgets the parent's connections without closing them
  or sending END: those sockets still belong to the parent. The reset runs from an
  ``os.register_at_fork`` hook, so borrowing makes no ``getpid()`` system call; a fork
  that bypasses Python's fork hooks (a C library calling ``fork()`` itself) is not
  covered.
- The pool's state changes only under its lock, and no socket I/O happens under it.
- :meth:`close` closes the idle connections; connections in use are closed when they come
  back. The pool stays usable afterwards (new connections are opened on demand).

Connections themselves are opened by the ``opener`` the client passes in, so this module
knows nothing about HELLO, wids or TLS.
"""

from __future__ import annotations

import abc
import asyncio
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Generic, TypeVar

from kaffi.client.aio_connection import AsyncConnection
from kaffi.client.connection import Connection
from kaffi.errors import ConfigurationError, PoolTimeout, RemoteProtocolError, TransportError

__all__ = ["ConnectionPool", "AsyncConnectionPool", "STALE_CHECK_AFTER"]

#: Seconds a connection may sit idle before the pool checks, when lending it, whether the
#: server closed it. Shorter idles skip the check (a ``select()`` per borrow on the hot
#: path): a connection closed within that window fails before any reply byte arrives.
STALE_CHECK_AFTER = 0.5

#: Every live pool, so the fork hook can reset them in the child.
_POOLS: weakref.WeakSet[_PoolBase[Any, Any]] = weakref.WeakSet()
#: Async connections a forked child (or a new event loop) must neither use nor close: their
#: transports belong to another process's (or a closed) event loop. Holding them here keeps
#: their destructors from running and complaining; the memory is small and per child.
_ORPHANS: list[Any] = []


def _poisoned(exc: BaseException) -> bool:
    return isinstance(exc, TransportError | RemoteProtocolError)


_C = TypeVar("_C", Connection, AsyncConnection)
#: What opens one connection: a function, or a coroutine function for the asyncio pool.
_O = TypeVar("_O", Callable[[], Connection], Callable[[], Awaitable[AsyncConnection]])


class _PoolBase(abc.ABC, Generic[_C, _O]):
    """The state both pools keep, their arguments and the checks of them, and their
    ``repr()`` (the arguments: see :class:`ConnectionPool`); each kind of pool adds how
    borrowers wait in :meth:`_init_waiting`."""

    def __init__(
        self, opener: _O, *, size: int = 10, timeout: float = 10.0, label: str = ""
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"pool_size must be an integer of 1 or more, got {size!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigurationError(
                f"pool_timeout must be a positive number of seconds, got {timeout!r}"
            )
        self.size = size
        self.timeout = float(timeout)
        #: Where the connections go (the server URL, never with a password): for messages.
        self.label = label
        self._idle: list[_C] = []
        self._in_use = 0
        #: Bumped by close() and fork/loop resets: connections of an older generation are
        #: closed when they come back instead of being pooled again.
        self._generation = 0
        self._pid = os.getpid()
        self._opener: _O = opener
        self._init_waiting()
        _POOLS.add(self)

    def __repr__(self) -> str:
        where = f" {self.label}" if self.label else ""
        return (
            f"<{type(self).__name__}{where} idle={len(self._idle)} in_use={self._in_use} "
            f"size={self.size}{self._repr_extra()}>"
        )

    def _repr_extra(self) -> str:
        return ""

    @property
    def idle(self) -> int:
        """How many open connections wait in the pool, unused."""
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """How many connections are borrowed (or being opened for a borrower) right now."""
        return self._in_use

    def _timeout_error(self) -> PoolTimeout:
        return PoolTimeout(
            f"no free connection to {self.label or 'the server'} within "
            f"{self.timeout:g} s: all {self.size} are in use "
            "(raise pool_size or pool_timeout, or hold connections for less time)"
        )

    @abc.abstractmethod
    def _init_waiting(self) -> None:
        """Create what borrowers wait on (a lock and condition, or futures)."""

    @abc.abstractmethod
    def _reset_after_fork(self) -> None:
        """Forget the parent's connections in a forked child (each pool kind its own way)."""


class ConnectionPool(_PoolBase[Connection, Callable[[], Connection]]):
    """A thread-safe pool of :class:`~kaffi.client.connection.Connection`.

    ``opener`` opens one connection (HI/HELLO included); ``size`` caps how many are open
    at once; ``timeout`` is how long :meth:`acquire` waits for a free one; ``label``
    names the server in messages.
    """

    def _init_waiting(self) -> None:
        self._lock = threading.Lock()
        self._available = threading.Condition(self._lock)
        #: Threads waiting on ``_available``: a release notifies only when there are any
        #: (Condition.notify costs about as much as the rest of a release).
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """How many threads wait in :meth:`acquire` for a connection right now."""
        return self._waiting

    # -- borrowing --------------------------------------------------------------------

    def acquire(self, *, fresh: bool = False, verify: bool = False) -> Connection:
        """Borrow a connection; with ``fresh`` always a newly opened one (the retry path).

        ``verify`` checks that an idle connection is still open whatever its idle time
        (for a command that cannot be retried); otherwise only connections idle for more
        than :data:`STALE_CHECK_AFTER` are checked. Raises PoolTimeout after ``timeout``
        seconds without a free slot, or whatever opening a connection raised.
        """
        discard: Connection | None = None
        conn: Connection | None = None
        with self._lock:
            idle = self._idle
            if idle and not fresh:
                # The common case: an idle connection, nothing to wait for.
                conn = idle.pop()
            else:
                conn, discard = self._wait_for_slot(fresh)
            self._in_use += 1
            generation = self._generation
        try:
            if discard is not None:
                discard.close()
            # A server restart closes idle connections: notice it here rather than with
            # a failed command, and open a new connection in the stale one's slot.
            if conn is not None:
                if (
                    verify or time.monotonic() - conn.idle_since > STALE_CHECK_AFTER
                ) and conn.is_stale():
                    conn.close()
                    conn = None
                else:
                    return conn
            conn = self._opener()
            conn.generation = generation
        except BaseException:
            self._give_back_slot()
            raise
        return conn

    def _wait_for_slot(self, fresh: bool) -> tuple[Connection | None, Connection | None]:
        """With the lock held, wait for a slot: ``(idle connection to use, None)``,
        ``(None, None)`` (open a new one) or ``(None, idle connection to close first)``.
        Raises PoolTimeout after ``timeout`` seconds."""
        deadline = 0.0
        while True:
            if self._idle and not fresh:
                return self._idle.pop(), None
            if self._in_use + len(self._idle) < self.size:
                return None, None
            if self._idle:
                # Full, but an idle connection can give up its slot to a fresh one.
                return None, self._idle.pop(0)
            if not deadline:
                deadline = time.monotonic() + self.timeout
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timeout_error()
            self._waiting += 1
            try:
                self._available.wait(left)
            finally:
                self._waiting -= 1

    def release(self, conn: Connection, *, discard: bool = False) -> None:
        """Return a borrowed connection; ``discard`` (or a broken one) closes it."""
        if conn.pid != self._pid:
            # Borrowed before a fork (the fork hook gave the pool the child's pid): the
            # parent's socket, and not counted in this process's pool.
            conn.abandon()
            return
        close = False
        with self._lock:
            self._in_use -= 1
            # proto.broken: the same as conn.broken, without a property call per return.
            if discard or conn.proto.broken or conn.generation != self._generation:
                close = True
            else:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            if self._waiting:
                self._available.notify()
        if close:
            conn.close()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """``with pool.connection() as conn:``; see the module docstring for the rules.
        The connection is checked for a server-side close however briefly it was idle:
        nothing retries what the caller sends on it."""
        conn = self.acquire(verify=True)
        try:
            yield conn
        except BaseException as exc:
            self.release(conn, discard=conn.broken or _poisoned(exc))
            raise
        self.release(conn)

    def close(self) -> None:
        """Close the idle connections (END each); ones in use close when released."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
            self._available.notify_all()
        for conn in idle:
            conn.close()

    # -- internals --------------------------------------------------------------------

    def _give_back_slot(self) -> None:
        with self._lock:
            self._in_use -= 1
            if self._waiting:
                self._available.notify()

    def _reset_after_fork(self) -> None:
        # Runs in the child only. The parent's lock may have been held by a thread that
        # does not exist here, so it is replaced, not acquired.
        self._lock = threading.Lock()
        self._available = threading.Condition(self._lock)
        self._waiting = 0
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abandon()
        self._in_use = 0
        self._generation += 1
        self._pid = os.getpid()


class AsyncConnectionPool(_PoolBase[AsyncConnection, Callable[[], Awaitable[AsyncConnection]]]):
    """An asyncio pool of :class:`~kaffi.client.aio_connection.AsyncConnection`, for one event loop.

    The same arguments as :class:`ConnectionPool`, with an ``opener`` coroutine. Used
    from a different event loop than before (a second ``asyncio.run()``), it forgets the
    connections of the old loop and starts over.
    """

    def _init_waiting(self) -> None:
        # Waiters get a connection handed over (or None: "a slot is free, open one").
        self._waiters: deque[asyncio.Future[AsyncConnection | None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _repr_extra(self) -> str:
        return f" waiting={len(self._waiters)}"

    @property
    def waiting(self) -> int:
        """How many borrowers wait in :meth:`acquire` for a connection right now."""
        return len(self._waiters)

    async def acquire(self, *, fresh: bool = False, verify: bool = False) -> AsyncConnection:
        """Borrow a connection; with ``fresh`` always a newly opened one (the retry path);
        ``verify`` as for :meth:`ConnectionPool.acquire`."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A new event loop, or a forked child (the fork hook cleared ``_loop``).
            self._rebind(loop)
        conn: AsyncConnection | None = None
        discard: AsyncConnection | None = None
        if self._idle and not fresh:
            conn = self._idle.pop()
            self._in_use += 1
        elif self._in_use + len(self._idle) < self.size:
            self._in_use += 1
        elif self._idle:
            # Full, but an idle connection can give up its slot to a fresh one.
            discard = self._idle.pop(0)
            self._in_use += 1
        else:
            # The slot comes with what the waiter is handed (a connection, or None).
            conn = await self._wait(loop)
            if fresh:
                discard, conn = conn, None
        generation = self._generation
        try:
            if discard is not None:
                await discard.close()
            # A server restart closes idle connections: notice it here rather than with
            # a failed command, and open a new connection in the stale one's slot. What
            # the event loop already saw is free to check; the socket only when needed.
            if conn is not None and conn.is_stale(
                probe=verify or loop.time() - conn.idle_since > STALE_CHECK_AFTER
            ):
                await conn.close()
                conn = None
            if conn is None:
                conn = await self._opener()
                conn.generation = generation
        except BaseException:
            self._hand_over(None)
            raise
        return conn

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> AsyncConnection | None:
        waiter: asyncio.Future[AsyncConnection | None] = loop.create_future()
        self._waiters.append(waiter)

        def expire() -> None:
            if not waiter.done():
                waiter.set_exception(self._timeout_error())

        # A timer instead of asyncio.wait_for: on Python 3.10 wait_for can drop a result
        # that arrives as the timeout fires, which here would leak a connection.
        timer = loop.call_later(self.timeout, expire)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a connection (or a slot) just as we were cancelled: pass it on.
                self._hand_over(waiter.result())
            raise
        finally:
            timer.cancel()
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def _hand_over(self, conn: AsyncConnection | None) -> None:
        """Give a connection (or, with None, a free slot) to the first live waiter, or
        put it back: the slot's ``in_use`` count moves with it."""
        if conn is not None:
            conn.idle_since = conn.loop.time()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._in_use -= 1
        if conn is not None:
            self._idle.append(conn)

    async def release(self, conn: AsyncConnection, *, discard: bool = False) -> None:
        """Return a borrowed connection; ``discard`` (or a broken one) closes it."""
        if conn.pid != self._pid:
            # Borrowed before a fork: the parent's, not ours to use or close.
            _ORPHANS.append(conn)
            return
        if conn.loop is not self._loop:
            # Borrowed on an event loop the pool has since left behind.
            conn.dispose()
            return
        if discard or conn.proto.broken or conn.generation != self._generation:
            self._hand_over(None)
            await conn.close()
        else:
            self._hand_over(conn)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """``async with pool.connection() as conn:``; see the module docstring (the
        connection is always checked, as with :meth:`ConnectionPool.connection`)."""
        conn = await self.acquire(verify=True)
        try:
            yield conn
        except BaseException as exc:
            await self.release(conn, discard=conn.broken or _poisoned(exc))
            raise
        await self.release(conn)

    async def close(self) -> None:
        """Close the idle connections (END each); ones in use close when released."""
        idle, self._idle = self._idle, []
        self._generation += 1
        for conn in idle:
            await conn.close()

    def _rebind(self, loop: asyncio.AbstractEventLoop) -> None:
        # A new process or a new loop: the old connections' transports cannot be used.
        # In a forked child they are the parent's (touching them could even act on the
        # parent's event loop): forget them. After a loop change, close them.
        old, self._idle = self._idle, []
        if self._pid != os.getpid():
            _ORPHANS.extend(old)
        else:
            for conn in old:
                conn.dispose()
        self._in_use = 0
        self._waiters = deque()
        self._generation += 1
        self._pid = os.getpid()
        self._loop = loop

    def _reset_after_fork(self) -> None:
        _ORPHANS.extend(self._idle)
        self._idle = []
        self._in_use = 0
        self._waiters = deque()
        self._generation += 1
        self._pid = os.getpid()
        self._loop = None


def _reset_pools_after_fork() -> None:
    for pool in list(_POOLS):
        pool._reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_after_fork)
