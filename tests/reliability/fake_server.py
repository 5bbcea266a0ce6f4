"""A misbehaving Faktory server on 127.0.0.1, for the client's hostile-peer tests.

:class:`MisbehavingServer` accepts connections and hands each socket to a *script*: a
function that greets (or not) and then answers the client's lines with whatever the test
wants: garbage, a reply cut short, nothing at all. Scripts never block for long: a
silent script waits on the server's stop event, so stopping the server ends every one.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["MisbehavingServer", "Script", "read_line", "HI", "OK"]

HI = b'+HI {"v":2}\r\n'
OK = b"+OK\r\n"

#: A script gets the accepted socket and the event that is set when the server stops.
Script = Callable[[socket.socket, threading.Event], None]


def read_line(sock: socket.socket, stop: threading.Event) -> bytes | None:
    """One line from the client (None when it went away or the server stops)."""
    data = bytearray()
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            chunk = sock.recv(1)
        except TimeoutError:
            continue
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
        if chunk == b"\n":
            return bytes(data)
    return None


class MisbehavingServer:
    """Runs ``script`` for every connection; counts them in ``accepted``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.accepted = 0
        self.stopped = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="fake-faktory", daemon=True)

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def start(self) -> MisbehavingServer:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> MisbehavingServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.script(conn, self.stopped)
            except OSError:
                # The client gave up on us: that is what most scripts provoke.
                return
