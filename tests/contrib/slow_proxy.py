"""A TCP proxy on 127.0.0.1 that can hold the server's replies: a slow Faktory, for real.

:class:`HoldingProxy` forwards every connection to a real server (the embedded one) in
both directions, one thread per direction. While ``hold()`` is in effect, bytes from the
server wait in the proxy until ``release()``; ``push_seen`` is set once a client sent a
``PUSH`` line through it. So a test can make exactly one request wait for the server, at
a point it knows, without sleeping.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["HoldingProxy"]

_WAIT = 30.0


class HoldingProxy:
    """Forward 127.0.0.1:``port`` to ``upstream``; hold server replies on demand."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        #: Set once a client sent a PUSH through the proxy.
        self.push_seen = threading.Event()
        self._open = threading.Event()
        self._open.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        """The Faktory URL of the proxy."""
        return f"tcp://127.0.0.1:{self.port}"

    def hold(self) -> None:
        """From now on, keep the server's replies until :meth:`release`."""
        self.push_seen.clear()
        self._open.clear()

    def release(self) -> None:
        """Let the held replies (and all later ones) through."""
        self._open.set()

    def __enter__(self) -> HoldingProxy:
        self._start(self._accept)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._closed = True
            sockets = [self._listener, *self._sockets]
        self._open.set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for thread in self._threads:
            thread.join(_WAIT)

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed: the proxy is stopping
                return
            server = socket.create_connection(self.upstream, timeout=_WAIT)
            server.settimeout(None)
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            self._start(self._pump, client, server, False)
            self._start(self._pump, server, client, True)

    def _pump(self, source: socket.socket, target: socket.socket, from_server: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                try:
                    target.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            if from_server:
                self._open.wait(_WAIT)
            elif b"PUSH " in data:
                self.push_seen.set()
            try:
                target.sendall(data)
            except OSError:
                return
