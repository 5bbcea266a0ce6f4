"""``EmbeddedServer``: run the Faktory-compatible server in-process, in a thread or a loop.

Two ways to run it:

- ``with EmbeddedServer() as srv:`` (or ``srv.start()`` / ``srv.stop()``): the server gets
  its own asyncio loop in a daemon thread; the control methods (``info``, ``flush``,
  ``advance_clock``, ``quiet_worker``...) are thread-safe and wait for the loop to run them;
- ``async with EmbeddedServer() as srv:`` or ``await srv.serve_forever()``: the server
  runs on the caller's loop (the control methods then run directly, on that loop's thread).

It refuses to listen on a non-loopback address without a password: an open Faktory port
lets anyone run code in your workers. The same goes for the web UI (``web="host:port"``,
off unless asked for; it needs the ``web`` extra, see :mod:`kaffi.server.web`), which
runs on the server's loop.

This module owns the server's lifecycle (storage, listener, loop thread) and its
thread-safe control methods; it must never change the server's state itself other than
through :class:`~kaffi.server.core.ServerCore`, on the server's own loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import logging
import os
import re
import socket
import sqlite3
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from kaffi.errors import ConfigurationError, KaffiError
from kaffi.protocol.resp import DEFAULT_MAX_LINE
from kaffi.server.core import ServerCore
from kaffi.server.network import FETCH_HOLD, Network
from kaffi.server.storage import SqliteJournal
from kaffi.server.throttles import Throttle, Throttles, ThrottleSource, load_throttles

if TYPE_CHECKING:
    from kaffi.server.web.runner import WebServer

__all__ = [
    "EmbeddedServer",
    "DEFAULT_MAX_CONNECTIONS",
    "check_fetch_hold",
    "parse_bind",
    "is_loopback",
]

log = logging.getLogger("kaffi.server")

DEFAULT_MAX_CONNECTIONS = 2000
_T = TypeVar("_T")
_CALL_TIMEOUT = 30.0
#: The shortest and longest FETCH hold the server accepts (``fetch_hold``, seconds).
MIN_FETCH_HOLD = 0.001
MAX_FETCH_HOLD = 3600.0


#: What a host name may be made of (RFC 1123 labels); IP addresses are checked apart.
_HOSTNAME = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def parse_bind(bind: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` for IPv6; an empty host, ``":7419"``, is 127.0.0.1)
    to a pair; anything else raises ConfigurationError saying what was wrong."""
    text = bind.strip()
    usage = "give HOST:PORT, like 127.0.0.1:7419 ([::1]:7419 for IPv6)"
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ConfigurationError(f"bad bind address {bind!r}: {usage}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigurationError(
                f"bad bind address {bind!r}: {host!r} is not an IPv6 address"
            ) from None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ConfigurationError(
            f"bad bind address {bind!r}: IPv6 addresses go in brackets, {usage}"
        )
    else:
        raise ConfigurationError(f"bad bind address {bind!r}: no port; {usage}")
    host = host or "127.0.0.1"
    if not text.startswith("[") and not _HOSTNAME.fullmatch(host):
        raise ConfigurationError(
            f"bad bind address {bind!r}: {host!r} is not a host name or address"
        )
    if not port_text.isdigit():
        raise ConfigurationError(f"bad bind address {bind!r}: the port must be a number; {usage}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigurationError(f"bad bind address {bind!r}: port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _resolves(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            return bool(socket.getaddrinfo(host, None))
        except OSError:
            return False
    return True


def check_fetch_hold(seconds: float) -> float:
    """``seconds`` as a FETCH hold: a finite number of seconds from 0.001 to 3600."""
    # bool is an int; NaN and infinity fail the range check (NaN compares false).
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigurationError(f"fetch_hold must be a number of seconds, got {seconds!r}")
    if not MIN_FETCH_HOLD <= seconds <= MAX_FETCH_HOLD:
        raise ConfigurationError(
            f"fetch_hold must be from {MIN_FETCH_HOLD:g} to {MAX_FETCH_HOLD:g} seconds, "
            f"got {seconds!r}"
        )
    return float(seconds)


class EmbeddedServer:
    """A Faktory-compatible server (protocol of Faktory 1.10.0) running in this process.

    ``fetch_hold`` is how many seconds a FETCH on empty queues waits for a job before the
    server answers ``$-1`` (Faktory's 2 s by default; the test fixtures use 0.1 s).
    ``enterprise=True`` adds the Faktory Enterprise features kaffi implements (unique
    and expiring jobs, batches, progress tracking; see ``docs/enterprise.md``); without it the
    server answers as the open-source Faktory 1.10.0 does. ``throttles`` (Enterprise
    only) limits how many jobs of a queue are in flight: the path of a
    ``throttles.toml``, or that document already parsed (``{"throttles": {"images":
    {"concurrency": 2, "timeout": 60}}}``); a mistake in it raises ConfigurationError.
    """

    def __init__(
        self,
        bind: str = "127.0.0.1:0",
        data: str | os.PathLike[str] | None = None,
        password: str | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_line: int = DEFAULT_MAX_LINE,
        fetch_hold: float = FETCH_HOLD,
        web: str | None = None,
        enterprise: bool = False,
        throttles: ThrottleSource | None = None,
    ) -> None:
        self._bind_host, self._bind_port = parse_bind(bind)
        if not _resolves(self._bind_host):
            raise ConfigurationError(
                f"bad bind address {bind!r}: cannot resolve host {self._bind_host!r}"
            )
        self.password = password or None
        if not self.password and not is_loopback(self._bind_host):
            raise ConfigurationError(
                f"refusing to listen on {self._bind_host} without a password: anyone who can "
                "reach it could run jobs; set a password or bind 127.0.0.1"
            )
        self._web_bind: tuple[str, int] | None = None
        if web is not None:
            from kaffi.server.web import MISSING_EXTRA, web_available

            self._web_bind = parse_bind(web)
            if not self.password and not is_loopback(self._web_bind[0]):
                raise ConfigurationError(
                    f"refusing to serve the web UI on {self._web_bind[0]} without a password: "
                    "anyone who can reach it could delete jobs; set a password or bind 127.0.0.1"
                )
            if not web_available():
                raise ConfigurationError(MISSING_EXTRA)
        if (tls_cert is None) != (tls_key is None):
            raise ConfigurationError("TLS needs both a certificate (tls_cert) and a key (tls_key)")
        #: How long a FETCH on empty queues waits before ``$-1`` (Faktory: 2 s). Test
        #: servers shorten it, so a stopping worker's last FETCH does not hold it up.
        self.fetch_hold = check_fetch_hold(fetch_hold)
        if max_connections < 1:
            raise ConfigurationError(f"max_connections must be at least 1, got {max_connections}")
        self.data = Path(data) if data is not None else None
        #: Whether the server implements the Faktory Enterprise features it knows
        #: (unique and expiring jobs, batches, TRACK: see ``docs/enterprise.md``).
        self.enterprise = bool(enterprise)
        #: The queue throttles (Enterprise's ``throttles.toml``), by queue name.
        self.throttles: dict[str, Throttle] = {}
        if throttles is not None:
            if not self.enterprise:
                raise ConfigurationError(
                    "throttles are a Faktory Enterprise feature: start the server with "
                    "enterprise=True (kaffi server --enterprise)"
                )
            self.throttles = load_throttles(throttles)
        self.tls_cert = Path(tls_cert) if tls_cert is not None else None
        self.tls_key = Path(tls_key) if tls_key is not None else None
        self.max_connections = max_connections
        self.max_line = max_line
        self.host = ""
        self.port = 0
        #: Where the web UI listens once started (empty and 0 without one).
        self.web_host = ""
        self.web_port = 0
        self._web: WebServer | None = None
        self.core: ServerCore | None = None
        self._net: Network | None = None
        self._journal: SqliteJournal | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._owns_loop = False
        self._loop_thread_id = 0

    def __repr__(self) -> str:
        state = f"listening on {self.host}:{self.port}" if self._net else "stopped"
        storage = str(self.data) if self.data else "memory"
        return f"<EmbeddedServer {state} storage={storage}>"

    # -- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``tcp://127.0.0.1:PORT``, ``tcp+tls://`` with TLS, ``:password@`` when set."""
        if not self.port:
            raise KaffiError("the server is not running: start it before asking for its url")
        scheme = "tcp+tls" if self.tls_cert else "tcp"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}"

    @property
    def web_url(self) -> str:
        """``http://127.0.0.1:PORT/``: the web UI's address (when started with ``web=``);
        ``https://`` when the server has a TLS certificate, which the UI serves too."""
        if not self.web_port:
            raise KaffiError("the web UI is not running: start the server with web='host:port'")
        host = f"[{self.web_host}]" if ":" in self.web_host else self.web_host
        scheme = "https" if self.tls_cert else "http"
        return f"{scheme}://{host}:{self.web_port}/"

    @property
    def running(self) -> bool:
        """True while the server listens."""
        return self._net is not None

    # -- asyncio --------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"cannot load the TLS certificate or key: {exc}") from None
        return ctx

    async def start_async(self) -> None:
        """Open storage and start listening on the running loop."""
        if self._net is not None:
            raise KaffiError("the server is already running")
        ctx = self._ssl_context()
        journal: SqliteJournal | None = None
        throttles = Throttles(self.throttles) if self.throttles else None
        core = ServerCore(enterprise=self.enterprise, throttles=throttles)
        if self.data is not None:
            try:
                journal = SqliteJournal(self.data)
                journal.load(core)
            except Exception as exc:
                if journal is not None:
                    journal.close()
                if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                    raise ConfigurationError(
                        f"cannot open the data file {self.data}: another server is using it "
                        "(the database is locked); "
                        "give this one a file of its own (--data FILE) or none (--memory)"
                    ) from exc
                raise ConfigurationError(f"cannot open the data file {self.data}: {exc}") from exc
            core.journal = journal
            if throttles is not None:
                # Jobs reserved before the restart hold their throttle slots again.
                throttles.restore(core.reservations.values(), core.clock.now())
        loop = asyncio.get_running_loop()
        net = Network(
            core,
            loop,
            password=self.password,
            journal=journal,
            max_connections=self.max_connections,
            max_line=self.max_line,
            fetch_hold=self.fetch_hold,
        )
        try:
            self.host, self.port = await net.listen(self._bind_host, self._bind_port, ctx)
        except OSError as exc:
            if journal is not None:
                journal.close()
            raise ConfigurationError(
                f"cannot listen on {self._bind_host}:{self._bind_port}: {exc.strerror or exc}"
            ) from None
        if self._web_bind is not None:
            try:
                await self._start_web(core, net, journal)
            except BaseException:
                await net.close()
                if journal is not None:
                    journal.close()
                raise
        self.core = core
        self._journal = journal
        self._net = net
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._stopped = asyncio.Event()
        # Debug, not info: `kaffi server` prints its own line saying where it listens.
        log.debug("kaffi server listening on %s:%d", self.host, self.port)

    async def _start_web(
        self, core: ServerCore, net: Network, journal: SqliteJournal | None
    ) -> None:
        from kaffi.server.web.app import WebContext
        from kaffi.server.web.runner import WebServer

        assert self._web_bind is not None
        history: Callable[[int], list[tuple[str, int, int]]] | None = None
        if journal is not None:
            store = journal

            def history_of(days: int) -> list[tuple[str, int, int]]:
                return store.daily(days, core.clock.now())

            history = history_of
        # net.flush, not schedule_flush: the redirect after an action is only sent once the
        # change is on disk, as a command's reply is.
        ctx = WebContext(core, net.flush, password=self.password, history=history)
        web = WebServer(ctx)
        host, port = self._web_bind
        try:
            self.web_host, self.web_port = await web.start(host, port, self.tls_cert, self.tls_key)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve the web UI on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self._web = web
        log.info("kaffi web UI on %s", self.web_url)

    async def stop_async(self) -> None:
        """Stop listening, close every connection, commit and close storage (on the loop
        the server runs on); a server that is not running is left as it is."""
        net = self._net
        if net is None:
            return
        self._net = None
        if self._web is not None:
            web, self._web = self._web, None
            await web.stop()
            self.web_port = 0
        await net.close()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.port = 0
        if self._stopped is not None:
            self._stopped.set()

    async def serve_forever(self) -> None:
        """Start (if needed) and serve until :meth:`stop_async` (or :meth:`stop` from
        another thread) or cancellation; run it as a task:
        ``task = asyncio.create_task(server.serve_forever())``."""
        if self._net is None:
            await self.start_async()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        finally:
            await self.stop_async()

    #: The same as :meth:`serve_forever`.
    serve = serve_forever

    async def __aenter__(self) -> EmbeddedServer:
        await self.start_async()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_async()

    # -- thread ---------------------------------------------------------------------------

    def start(self) -> EmbeddedServer:
        """Run the server on its own loop in a daemon thread; returns once it listens."""
        if self._thread is not None or self._net is not None:
            raise KaffiError("the server is already running")
        started: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start_async())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                assert self._stopped is not None
                loop.run_until_complete(self._stopped.wait())
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._owns_loop = True
        self._thread = threading.Thread(target=run, name="kaffi-server", daemon=True)
        self._thread.start()
        try:
            started.result(timeout=_CALL_TIMEOUT)
        except BaseException:
            self._thread.join(timeout=_CALL_TIMEOUT)
            self._thread = None
            self._owns_loop = False
            raise
        return self

    def stop(self) -> None:
        """Stop listening, close every connection, commit and close storage.

        Call it from any thread but the server's own. A server running on an asyncio
        host's loop is stopped the same way from another thread; on that loop, use
        ``await server.stop_async()`` instead (a blocking stop there would deadlock).
        """
        thread = self._thread
        loop = self._loop
        if loop is None:
            return
        if thread is None:
            # Running on an asyncio host's loop (start_async / serve_forever / async with).
            if self._net is None:
                return
            if threading.get_ident() == self._loop_thread_id:
                raise KaffiError(
                    "stop() would block the loop the server runs on: use await stop_async()"
                )
            fut = asyncio.run_coroutine_threadsafe(self.stop_async(), loop)
            fut.result(timeout=_CALL_TIMEOUT)
            return
        if threading.current_thread() is thread:
            raise KaffiError("stop() waits for the server's thread: call it from another thread")
        if thread.is_alive() and self._net is not None:
            fut = asyncio.run_coroutine_threadsafe(self.stop_async(), loop)
            fut.result(timeout=_CALL_TIMEOUT)
        thread.join(timeout=_CALL_TIMEOUT)
        self._thread = None
        self._loop = None
        self._owns_loop = False

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- control (thread-safe) ------------------------------------------------------------

    def _call(self, fn: Callable[[], _T]) -> _T:
        loop = self._loop
        if loop is None or self._net is None:
            raise KaffiError("the server is not running")
        if threading.get_ident() == self._loop_thread_id:
            return fn()
        result: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result.set_result(fn())
            except BaseException as exc:
                result.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return result.result(timeout=_CALL_TIMEOUT)

    def _core_and_net(self) -> tuple[ServerCore, Network]:
        if self.core is None or self._net is None:
            raise KaffiError("the server is not running")
        return self.core, self._net

    def info(self) -> dict[str, Any]:
        """The INFO document, as a client would read it."""
        return self._call(lambda: self._core_and_net()[0].info())

    def flush(self) -> None:
        """Delete every job (the FLUSH command)."""

        def run() -> None:
            core, net = self._core_and_net()
            core.flush()
            net.flush()

        self._call(run)

    def advance_clock(self, seconds: float) -> None:
        """Move the server's clock forward and run its periodic tasks at once: scheduled
        jobs and retries fall due, reservations expire, silent workers are forgotten."""

        def run() -> None:
            core, net = self._core_and_net()
            core.clock.advance(seconds)
            net.tick_now()
            net.flush()

        self._call(run)

    def quiet_worker(self, wid: str) -> bool:
        """Ask worker ``wid`` to stop fetching (its next BEAT is answered ``quiet``).
        Returns False when no such worker is connected."""
        return self._call(lambda: self._core_and_net()[0].signal_worker(wid, "quiet"))

    def terminate_worker(self, wid: str) -> bool:
        """Ask worker ``wid`` to finish and exit (its next BEAT is answered ``terminate``)."""
        return self._call(lambda: self._core_and_net()[0].signal_worker(wid, "terminate"))

    def workers(self) -> list[dict[str, Any]]:
        """The workers the server knows: wid, state, rss_kb, last_beat, connections."""
        return self._call(lambda: [w.to_dict() for w in self._core_and_net()[0].workers.values()])
