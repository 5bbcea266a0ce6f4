"""A TCP fault-injection proxy on 127.0.0.1 for the reliability tests.

:class:`FaultProxy` listens on a free loopback port and forwards every connection to the
real server. The test can then

- count the connections clients open (``accepted``): a wrong password must not turn into
  a reconnect storm;
- cut connections at random while bytes flow (``drop_probability``, per forwarded chunk),
  or cut some or all live ones now (``drop_random``, ``drop_all``): clients and workers
  must notice, reconnect, and lose nothing;
- refuse service for a while (``refusing``: accept, then close at once).

It runs its own asyncio loop in a daemon thread; the control methods are thread-safe.
A cut aborts both sides at once (no graceful FIN exchange), like a dying network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

__all__ = ["FaultProxy"]

_T = TypeVar("_T")
_CHUNK = 65536
_CALL_TIMEOUT = 10.0


class _Link:
    """One proxied connection: the client's side and the server's side."""

    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.closed = False

    def cut(self) -> None:
        if self.closed:
            return
        self.closed = True
        for writer in (self.client, self.server):
            writer.transport.abort()


class FaultProxy:
    """Forward 127.0.0.1:``port`` to ``upstream_host``:``upstream_port``, with faults."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        drop_probability: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        #: Chance, per forwarded chunk, that the connection is cut instead.
        self.drop_probability = drop_probability
        #: Accept connections and close them at once, without forwarding.
        self.refusing = False
        self.accepted = 0
        self.dropped = 0
        self.port = 0
        self.host = "127.0.0.1"
        self._random = random.Random(seed)
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]}"
            f" accepted={self.accepted} dropped={self.dropped} live={len(self._links)}>"
        )

    def url(self, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"tcp://{auth}127.0.0.1:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve(started))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        started.result(timeout=_CALL_TIMEOUT)
        return self

    async def _serve(self, started: concurrent.futures.Future[None]) -> None:
        self._stop = asyncio.Event()
        try:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        except BaseException as exc:
            started.set_exception(exc)
            return
        self.port = int(self._server.sockets[0].getsockname()[1])
        started.set_result(None)
        await self._stop.wait()
        self._server.close()
        for link in list(self._links):
            link.cut()
        # Let every handler see its cut and end before the loop closes.
        handlers = [t for t in self._handlers if not t.done()]
        if handlers:
            await asyncio.wait(handlers, timeout=_CALL_TIMEOUT)
        for task in handlers:
            if not task.done():
                task.cancel()
        await self._server.wait_closed()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop.set)
        thread.join(_CALL_TIMEOUT)
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control (thread-safe) ------------------------------------------------------------

    def _call(self, fn: Callable[[], _T]) -> _T:
        loop = self._loop
        assert loop is not None, "the proxy is not running"
        result: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return result.result(timeout=_CALL_TIMEOUT)

    def live(self) -> int:
        return self._call(lambda: len(self._links))

    def drop_all(self) -> int:
        """Cut every live connection now; returns how many."""

        def run() -> int:
            links = list(self._links)
            for link in links:
                self._cut(link)
            return len(links)

        return self._call(run)

    def drop_random(self, fraction: float) -> int:
        """Cut about ``fraction`` of the live connections, chosen at random."""

        def run() -> int:
            links = [link for link in self._links if self._random.random() < fraction]
            for link in links:
                self._cut(link)
            return len(links)

        return self._call(run)

    # -- forwarding -----------------------------------------------------------------------

    def _cut(self, link: _Link) -> None:
        if not link.closed:
            self.dropped += 1
        link.cut()
        self._links.discard(link)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer), self._pump(link, up_reader, writer)
            )
        finally:
            self._links.discard(link)
            if not link.closed:
                link.closed = True
                for w in (writer, up_writer):
                    w.close()

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while not link.closed:
                data = await reader.read(_CHUNK)
                if not data:
                    # One side finished sending: pass the half-close on, keep the other way.
                    if not link.closed and writer.can_write_eof():
                        writer.write_eof()
                    return
                if self.drop_probability and self._random.random() < self.drop_probability:
                    self._cut(link)
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            self._cut(link)
