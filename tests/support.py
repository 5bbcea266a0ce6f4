"""Helpers shared by the whole test suite: one way to wait, one fake server, test servers.

- :func:`wait_until` polls a predicate until a deadline (``WAIT``, generous for a loaded
  2-core machine) and fails naming what it waited for. Tests never sleep to synchronise.
- :func:`free_port` / :func:`closed_port_url`: a loopback port nobody listens on.
- :func:`start` / :func:`running`: a :class:`~kaffi.worker.Worker` run in a thread, stopped
  and checked at the end.
- :func:`embedded_server`: an :class:`~kaffi.server.EmbeddedServer` with the short FETCH
  hold of the ``faktory_server`` fixture (pass ``fetch_hold=`` for another one);
  :func:`waiting_fetches`: how many FETCHes are blocked in one, waiting for a job.
- :class:`LogLines`: a subprocess's output, read in a thread, to wait on log lines.
- :class:`FakeFaktory`: a fake Faktory on 127.0.0.1 port 0, one thread per connection.
  By default it records every line a client sends and answers like Faktory 1.10.0 does
  for the commands the client uses (HI/HELLO with the password hash, PUSH, PUSHB, FETCH,
  ACK, FAIL, BEAT, INFO, FLUSH, END, MUTATE, QUEUE); a test can script the next replies to
  a verb (raw bytes, or CLOSE / SILENT), replace the greeting, speak TLS, or drop every
  connection at once to look like a server restart. Given a ``handler``, it hands each
  accepted socket to it instead, for servers that misbehave (garbage, cut replies,
  silence); a handler waits on the stop event it gets, so stopping the server ends it.

The real server for tests is the embedded one (the ``faktory_server`` fixture); the fake
is for what a real server never does.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kaffi.app.workers import WorkerHandle
from kaffi.protocol.resp import CommandParser, encode_bulk
from kaffi.server import EmbeddedServer
from kaffi.testing.pytest_plugin import TEST_FETCH_HOLD

#: Any worker: ``app.worker()`` promises a WorkerHandle, ``Worker(...)`` is one.
W = TypeVar("W", bound=WorkerHandle)

__all__ = [
    "CLOSE",
    "HI",
    "LogLines",
    "kaffi_process",
    "OK",
    "POLL",
    "SILENT",
    "WAIT",
    "FakeFaktory",
    "Handler",
    "Session",
    "closed_port_url",
    "embedded_server",
    "expected_pwdhash",
    "free_port",
    "read_line",
    "running",
    "start",
    "wait_until",
    "waiting_fetches",
]

#: Upper bound for anything a test waits for; generous for a loaded 2-core machine.
WAIT = 30.0
#: How often polling loops look again.
POLL = 0.01


def wait_until(
    predicate: Callable[[], object], what: str | Callable[[], str], timeout: float = WAIT
) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` (a text, or a function
    giving one, for details known only at the end) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:g}s waiting for {text}")
        time.sleep(POLL)


def free_port() -> int:
    """A loopback port nobody listens on right now (bound for a moment, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url() -> str:
    """A ``tcp://`` URL on loopback where nothing listens."""
    return f"tcp://127.0.0.1:{free_port()}"


class LogLines:
    """Collects a subprocess's output lines (one pipe) in a thread, so tests can wait on
    them: ``wait_for(needle)``, ``lines``, ``text()``; ``finish()`` once the process ended."""

    def __init__(self, stream: Iterable[str]) -> None:
        self.lines: list[str] = []
        self._stream = stream
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="test-log-lines", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for line in self._stream:
                self.lines.append(line.rstrip("\n"))
        except (OSError, ValueError):
            # The pipe was closed under us: the process is gone and so is its output.
            pass
        finally:
            self._done.set()

    def wait_for(self, needle: str, count: int = 1, timeout: float = WAIT) -> list[str]:
        """Wait until ``count`` lines contain ``needle``; return every such line."""

        def found() -> list[str]:
            return [line for line in self.lines if needle in line]

        wait_until(
            lambda: len(found()) >= count,
            lambda: (
                f"{count} log line(s) with {needle!r}; the last lines:\n"
                + "\n".join(self.lines[-40:])
            ),
            timeout,
        )
        return found()

    def finish(self, timeout: float = WAIT) -> None:
        """Wait (bounded) until the whole output has been read: the pipe reached its end."""
        self._done.wait(timeout)

    def text(self) -> str:
        """Everything read so far, one line per line."""
        return "\n".join(self.lines)


def run_command(
    *command: str,
    cwd: str | os.PathLike[str],
    url: str | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 40,
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` to its end in ``cwd``, output captured as text, with no server
    setting of the test run leaking in (``FAKTORY_URL``/``FAKTORY_PROVIDER`` removed;
    ``url`` sets ``FAKTORY_URL``), plus ``extra_env``."""
    env = {k: v for k, v in os.environ.items() if k not in ("FAKTORY_URL", "FAKTORY_PROVIDER")}
    if url is not None:
        env["FAKTORY_URL"] = url
    env.update(extra_env or {})
    return subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextmanager
def kaffi_process(
    *args: str, cwd: str | os.PathLike[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], LogLines]]:
    """``python -m kaffi ARGS`` in ``cwd`` with its stderr read into :class:`LogLines`;
    stopped when the block ends if a test leaves it running: SIGTERM first (a supervisor
    passes it on to its children, which hold the stderr pipe open while they live), then
    a kill."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kaffi", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    reader = LogLines(proc.stderr)
    try:
        yield proc, reader
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(WAIT / 2)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.wait(WAIT)
        reader.finish()
        proc.stderr.close()


def start(worker: WorkerHandle) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``worker`` in a thread; the list gets whatever ``run()`` raised."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(worker.run())
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-worker", daemon=True)
    thread.start()
    return thread, errors


@contextmanager
def running(worker: W) -> Iterator[W]:
    """Run ``worker`` in a thread; stop it (and check it stopped cleanly) on exit."""
    thread, errors = start(worker)
    assert worker.ready.wait(WAIT), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop(timeout=WAIT)
        thread.join(WAIT)
        assert not thread.is_alive(), "worker thread did not end"
    if errors:
        raise errors[0]


def embedded_server(bind: str = "127.0.0.1:0", **options: Any) -> EmbeddedServer:
    """An :class:`EmbeddedServer` (not started) whose empty FETCH answers after
    ``TEST_FETCH_HOLD`` unless ``fetch_hold=`` says otherwise; other options pass through."""
    options.setdefault("fetch_hold", TEST_FETCH_HOLD)
    return EmbeddedServer(bind, **options)


def waiting_fetches(srv: EmbeddedServer) -> int:
    """How many FETCHes are blocked in ``srv`` right now, waiting for a job."""

    def count() -> int:
        assert srv.core is not None
        return len({id(w) for ws in srv.core.waiters.values() for w in ws if not w.done})

    return srv._call(count)


# -- the fake Faktory ----------------------------------------------------------------------

#: Close the connection instead of answering.
CLOSE = "close"
#: Never answer (the connection stays open).
SILENT = "silent"
#: Faktory's greeting without a password, and its plain OK.
HI = b'+HI {"v":2}\r\n'
OK = b"+OK\r\n"

#: A scripted reply: raw bytes, CLOSE, SILENT, or a tuple of those done in order
#: (``(b"+O", CLOSE)``: half a reply, then hang up).
Reply = bytes | str | tuple[bytes | str, ...]
#: A raw connection handler: the accepted socket, and the event set when the server stops.
Handler = Callable[[socket.socket, threading.Event], None]


def read_line(sock: socket.socket, stop: threading.Event) -> bytes | None:
    """One line from the client, for handlers (None when it went away or the server stops)."""
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


def expected_pwdhash(password: str, salt: str, iterations: int) -> str:
    """Faktory's pwdhash, written independently of kaffi's for the tests."""
    data = hashlib.sha256(password.encode() + salt.encode()).digest()
    for _ in range(iterations - 1):
        data = hashlib.sha256(data).digest()
    return data.hex()


@dataclass
class Session:
    """One accepted connection as the server sees it."""

    number: int
    sock: socket.socket
    hello: dict[str, Any] | None = None
    lines: list[str] = field(default_factory=list)
    ended: bool = False
    closed: bool = False


class FakeFaktory:
    """The one fake Faktory of the test suite (see the module docstring): scripted replies
    per verb, or a raw ``handler`` that owns each connection."""

    def __init__(
        self,
        handler: Handler | None = None,
        *,
        password: str | None = None,
        salt: str = "pepper-salt",
        iterations: int = 3,
        tls: ssl.SSLContext | None = None,
        greeting: bytes | None = None,
    ) -> None:
        self.handler = handler
        self.password = password
        self.salt = salt
        self.iterations = iterations
        self.tls = tls
        self.greeting = greeting
        self.sessions: list[Session] = []
        self.queues: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._all_lines: list[tuple[int, str]] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    # -- control ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        scheme = "tcp+tls" if self.tls else "tcp"
        if self.password:
            return f"{scheme}://:{self.password}@127.0.0.1:{self.port}"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> int:
        """How many connections the server has accepted so far."""
        with self._cond:
            return len(self.sessions)

    def start(self) -> FakeFaktory:
        self._acceptor.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._acceptor.join(5)
        self._listener.close()
        self.drop_connections()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> FakeFaktory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, verb: str, *replies: Reply) -> None:
        """The next replies to ``verb``, in order (then the default behaviour resumes)."""
        with self._cond:
            self._scripts[verb.upper()].extend(replies)

    def drop_connections(self) -> None:
        """Close every open connection from the server's side (a restart, as clients see it)."""
        with self._cond:
            sessions = list(self.sessions)
        for session in sessions:
            _hard_close(session.sock)
            session.closed = True

    @property
    def lines(self) -> list[str]:
        """Every line received (HELLO included), in arrival order across sessions."""
        with self._cond:
            return [line for _, line in sorted(self._all_lines)]

    def commands(self, verb: str) -> list[str]:
        """The lines received that start with ``verb``."""
        return [line for line in self.lines if line.split(" ", 1)[0] == verb]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Block until ``predicate()`` holds (checked on every received line), or fail."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met within {timeout} s: {self.lines}")
                self._cond.wait(left)

    # -- serving ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                session = Session(len(self.sessions), sock)
                self.sessions.append(session)
                self._cond.notify_all()
            thread = threading.Thread(target=self._serve, args=(session,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, session: Session) -> None:
        sock = session.sock
        if self.handler is not None:
            try:
                self.handler(sock, self._stopping)
            except OSError:
                # The client gave up on us: that is what most hostile handlers provoke.
                pass
            finally:
                session.closed = True
                _hard_close(sock)
            return
        try:
            sock.settimeout(10)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
                session.sock = sock
            self._greet(sock)
            parser = CommandParser()
            # Short reads, so stop() never waits for a read that a close did not wake.
            sock.settimeout(0.1)
            while True:
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    if self._stopping.is_set():
                        return
                    continue
                if not data:
                    return
                parser.feed(data)
                while (command := parser.next_command()) is not None:
                    line = command.verb + ("" if command.arg is None else " " + command.arg)
                    with self._cond:
                        session.lines.append(line)
                        self._all_lines.append((len(self._all_lines), line))
                        self._cond.notify_all()
                    if not self._answer(session, command.verb, command.arg or ""):
                        return
        except (OSError, ValueError):
            return
        finally:
            session.closed = True
            _hard_close(sock)
            with self._cond:
                self._cond.notify_all()

    def _greet(self, sock: socket.socket) -> None:
        if self.greeting is not None:
            if self.greeting:
                sock.sendall(self.greeting)
            return
        hi: dict[str, Any] = {"v": 2}
        if self.password is not None:
            hi.update(i=self.iterations, s=self.salt)
        sock.sendall(b"+HI " + json.dumps(hi, separators=(",", ":")).encode() + b"\r\n")

    def _answer(self, session: Session, verb: str, arg: str) -> bool:
        """Send the reply to one command; False means: close the connection now."""
        with self._cond:
            scripted = self._scripts[verb].popleft() if self._scripts[verb] else None
        if scripted is not None:
            for step in scripted if isinstance(scripted, tuple) else (scripted,):
                if step == CLOSE:
                    return False
                if step == SILENT:
                    return True
                assert isinstance(step, bytes)
                session.sock.sendall(step)
            return True
        if session.hello is None and verb != "HELLO":
            return False  # Faktory closes on a command before HELLO, without a word
        reply = self._default(session, verb, arg)
        if reply is None:
            return False
        session.sock.sendall(reply)
        return not reply.startswith(b"-ERR Invalid password")

    def _default(self, session: Session, verb: str, arg: str) -> bytes | None:
        if verb == "HELLO":
            hello = json.loads(arg)
            if self.password is not None and hello.get("pwdhash") != expected_pwdhash(
                self.password, self.salt, self.iterations
            ):
                return b"-ERR Invalid password\r\n"
            session.hello = hello
            return b"+OK\r\n"
        if verb == "END":
            session.ended = True
            return None
        if verb == "PUSH":
            job = json.loads(arg)
            if len(job.get("jid") or "") < 8:
                return b"-ERR jobs must have a reasonable jid parameter\r\n"
            self.queues[job.get("queue", "default")].append(job)
            return b"+OK\r\n"
        if verb == "PUSHB":
            refused = {}
            for job in json.loads(arg):
                if len(job.get("jid") or "") < 8:
                    refused[job.get("jid")] = "jobs must have a reasonable jid parameter"
                else:
                    self.queues[job.get("queue", "default")].append(job)
            return encode_bulk(json.dumps(refused))
        if verb == "FETCH":
            for queue in arg.split(" "):
                if self.queues.get(queue):
                    return encode_bulk(json.dumps(self.queues[queue].popleft()))
            return b"$-1\r\n"
        if verb in ("ACK", "FAIL", "FLUSH", "MUTATE", "BEAT"):
            if verb == "FLUSH":
                self.queues.clear()
            return b"+OK\r\n"
        if verb == "INFO":
            doc = {
                "now": "2030-01-01T00:00:00Z",
                "faktory": {
                    "queues": {q: len(jobs) for q, jobs in self.queues.items()},
                    "sets": {"scheduled": 0, "retries": 0, "dead": 0, "working": 0},
                    "tasks": {},
                    "total_processed": 7,
                },
                "server": {"faktory_version": "1.10.0", "connections": len(self.sessions)},
            }
            return encode_bulk(json.dumps(doc))
        if verb == "QUEUE":
            sub, _, names = arg.partition(" ")
            if sub == "LATENCY":
                return encode_bulk(json.dumps(dict.fromkeys(names.split(" "), 1.5)))
            return b"+OK\r\n"
        return f"-ERR unknown command {verb}\r\n".encode()


def _hard_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
