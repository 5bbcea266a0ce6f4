"""What every measurement shares: results, the server, the control connection, processes.

- :class:`Throughput`, :class:`Gauge` and :class:`Results` (from :mod:`bench.results`)
  are re-exported here for the measuring modules.
- :class:`Endpoint` is a parsed ``FAKTORY_URL``; the suite refuses anything that is not a
  loopback address, so it can never load a machine it does not own.
- :class:`SyncConn` is a minimal blocking Faktory connection built on
  :mod:`kaffi.protocol` alone. The harness uses it to flush, fill and watch the server, so
  the harness never depends on the client it is measuring.
- :class:`ServerControl` answers "how many jobs are left" from INFO and waits for a queue
  to drain; :class:`ServerProcess` runs the embedded server in its own process (so it does
  not share a GIL with the client under measurement).
- Process helpers read RSS from ``/proc`` and stop processes with a bounded wait.

Every wait here has a deadline; nothing loops without a bound.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench.results import Gauge, Results, Throughput
from kaffi.protocol import (
    Reply,
    ReplyParser,
    decode_hi,
    decode_json,
    decode_ok,
    encode_flush,
    encode_hello,
    encode_info,
    encode_pushb,
    encode_queue,
)

__all__ = [
    "DRAIN_POLL_MAX",
    "FETCH_BLOCK_SECONDS",
    "REPO_ROOT",
    "RESULTS_DIR",
    "BenchError",
    "Deadline",
    "Endpoint",
    "Gauge",
    "Results",
    "ServerControl",
    "ServerProcess",
    "SyncConn",
    "Throughput",
    "child_env",
    "cpu_seconds",
    "drain_poll_delay",
    "noop_jobs",
    "process_tree",
    "rss_mb",
    "stop_process",
    "tree_cpu_seconds",
    "tree_rss_mb",
]

#: How long a FETCH blocks on an empty queue before the server answers ``$-1``.
FETCH_BLOCK_SECONDS = 2.0
#: The folder holding ``bench/`` and ``kaffi/``: worker subprocesses run from here so
#: ``bench.tasks:app`` imports.
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Raw results and logs of the last run (gitignored).
RESULTS_DIR = REPO_ROOT / "bench" / "results"


class BenchError(Exception):
    """A measurement could not be taken; the message says which and why."""


class Deadline:
    """A point in time a loop must not pass."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    @property
    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


# -- the server's address -----------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A loopback Faktory server: where it is and its password."""

    host: str
    port: int
    password: str | None
    url: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme != "tcp":
            raise BenchError(f"bench speaks plain tcp:// only, got {url!r}")
        host = parts.hostname or "localhost"
        if not _is_loopback(host):
            raise BenchError(
                f"bench sends load only to loopback addresses (127.0.0.0/8, ::1, localhost); "
                f"{host!r} is not one"
            )
        password = unquote(parts.password) if parts.password else None
        return cls(host=host, port=parts.port or 7419, password=password, url=url)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


# -- a minimal blocking connection --------------------------------------------------------


class SyncConn:
    """One blocking Faktory connection: HI/HELLO, then ``request`` or raw ``send``/``read``."""

    def __init__(self, endpoint: Endpoint, *, wid: str | None = None, timeout: float = 10.0):
        self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = ReplyParser()
        hi = decode_hi(self.read_reply())
        hello = encode_hello(
            hi,
            hostname="bench",
            wid=wid,
            pid=os.getpid() if wid else None,
            labels=["bench"] if wid else None,
            password=endpoint.password,
        )
        decode_ok(self.request(hello), "HELLO")
        _kernel_timeouts(self.sock, timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_reply(self) -> Reply:
        # Bounded by the kernel's receive timeout: a silent server raises an OSError.
        while True:
            reply = self.parser.next_reply()
            if reply is not None:
                return reply
            # 64 KiB: a larger buffer is mmap-allocated, costing three system calls a read.
            chunk = self.sock.recv(65536)
            if not chunk:
                raise BenchError("the server closed the connection")
            self.parser.feed(chunk)

    def request(self, line: bytes) -> Reply:
        self.send(line)
        return self.read_reply()

    def close(self) -> None:
        try:
            self.sock.sendall(b"END\r\n")
        except OSError:
            pass
        self.sock.close()


def _kernel_timeouts(sock: socket.socket, timeout: float) -> None:
    """Bound every send and receive with the kernel's own timeouts and make the socket
    blocking: Python's socket timeout would add a poll() before every read and write,
    which a raw ceiling should not pay (the clients under measurement do not)."""
    if not hasattr(socket, "SO_RCVTIMEO"):
        return
    seconds = int(timeout)
    timeval = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except OSError:
        return  # keep Python's timeout where the kernel will not take these
    sock.settimeout(None)


def noop_jobs(
    n: int, *, jobtype: str = "noop", queue: str = "default", args: Sequence[Any] = ()
) -> Iterator[dict[str, Any]]:
    """``n`` small job payloads with unique jids (``retry`` explicit, see REFERENCE.md)."""
    stamp = f"{os.getpid():x}{time.monotonic_ns():x}"
    arglist = list(args)
    for i in range(n):
        yield {
            "jid": f"b{stamp}{i:08x}",
            "jobtype": jobtype,
            "queue": queue,
            "args": arglist,
            "retry": 25,
        }


#: The longest a drain goes unobserved (see :meth:`ServerControl.wait_drained`).
DRAIN_POLL_MAX = 0.25


def drain_poll_delay(poll: float, first: float | None, now: float, total: int, left: int) -> float:
    """How long to sleep before the next look at a drain: ``poll`` until it starts and
    as it ends, and half the time its rate so far says is left in between."""
    done = total - left
    if first is None or done <= 0 or now <= first:
        return poll
    eta = left * (now - first) / done
    return min(max(eta / 2, poll), DRAIN_POLL_MAX)


class ServerControl:
    """The harness's own view of the server: flush, fill, count, wait for drains."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.conn = SyncConn(endpoint)

    def info(self) -> dict[str, Any]:
        doc = decode_json(self.conn.request(encode_info()), "INFO")
        if not isinstance(doc, dict):
            raise BenchError(f"INFO answered {doc!r}")
        return doc

    def flush(self) -> None:
        decode_ok(self.conn.request(encode_flush()), "FLUSH")

    def pending(self, queue: str) -> tuple[int, int]:
        """Jobs waiting in ``queue`` and jobs reserved by workers (the working set)."""
        faktory = self.info().get("faktory", {})
        size = int(faktory.get("queues", {}).get(queue, 0))
        working = int(faktory.get("sets", {}).get("working", 0))
        return size, working

    def fill(
        self, n: int, *, jobtype: str = "noop", queue: str = "default", args: Sequence[Any] = ()
    ) -> None:
        """Queue ``n`` jobs with PUSHB in batches of 1000, checking none was refused."""
        batch: list[dict[str, Any]] = []
        for job in noop_jobs(n, jobtype=jobtype, queue=queue, args=args):
            batch.append(job)
            if len(batch) == 1000:
                self._pushb(batch)
                batch = []
        if batch:
            self._pushb(batch)

    def _pushb(self, batch: list[dict[str, Any]]) -> None:
        refused = decode_json(self.conn.request(encode_pushb(batch)), "PUSHB")
        if refused:
            raise BenchError(f"the server refused {len(refused)} jobs: {str(refused)[:200]}")

    def queue(self, subcommand: str, name: str) -> None:
        """``QUEUE PAUSE name`` / ``QUEUE RESUME name``."""
        decode_ok(self.conn.request(encode_queue(subcommand, name)), f"QUEUE {subcommand}")

    def wait_drained(
        self,
        queue: str,
        total: int,
        *,
        timeout: float,
        poll: float = 0.01,
        on_first: Callable[[], None] | None = None,
    ) -> tuple[float, float]:
        """Wait until ``queue`` is empty and nothing is reserved; return the monotonic
        times of the first job taken and of the drain (``on_first`` is called as soon as
        the first job is seen taken). Raises BenchError on timeout.

        Both ends are seen to within ``poll``; in between, the harness looks less often
        the further the drain is from its end (half the time the rate so far says is left,
        at most :data:`DRAIN_POLL_MAX`). Each look is an INFO that costs the server about
        65 us and the harness about 30 us, on the cores the workers are measured on: ten
        a second cost a 2-process CPU-bound drain ~1% of its throughput."""
        deadline = Deadline(timeout)
        first: float | None = None
        while not deadline.expired:
            size, working = self.pending(queue)
            now = time.monotonic()
            if first is None and size < total:
                first = now
                if on_first is not None:
                    on_first()
            if size == 0 and working == 0:
                return (first if first is not None else now), now
            time.sleep(drain_poll_delay(poll, first, now, total, size + working))
        size, working = self.pending(queue)
        raise BenchError(
            f"queue {queue!r} did not drain within {timeout:.0f} s "
            f"({size} waiting, {working} reserved of {total})"
        )

    def wait_taken(self, queue: str, *, timeout: float, poll: float = 0.005) -> float:
        """Wait until ``queue`` is empty (its jobs were fetched); return when that was seen."""
        deadline = Deadline(timeout)
        while not deadline.expired:
            size, _ = self.pending(queue)
            if size == 0:
                return time.monotonic()
            time.sleep(poll)
        raise BenchError(f"no worker fetched from {queue!r} within {timeout:.0f} s")

    def close(self) -> None:
        self.conn.close()


# -- the embedded server in its own process -----------------------------------------------


class ServerProcess:
    """``python -m bench.server`` in a child process; ``url`` once it listens. Its log goes
    to ``log_dir/server.log`` (``bench/results/`` unless told otherwise); ``fetch_hold``:
    its empty-FETCH wait in seconds (Faktory's 2 s when None)."""

    def __init__(
        self,
        *,
        start_timeout: float = 30.0,
        log_dir: Path = RESULTS_DIR,
        fetch_hold: float | None = None,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / "server.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.server"]
            + ([] if fetch_hold is None else ["--fetch-hold", str(fetch_hold)]),
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env(),
        )
        try:
            self.url = _read_line(self.proc, start_timeout, self.log_path)
        except BaseException:
            self.stop()
            raise
        if not self.url.startswith("tcp://"):
            self.stop()
            raise BenchError(f"the embedded server printed {self.url!r} instead of its URL")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()  # the server exits at EOF on its stdin
            except OSError:
                pass
        stop_process(self.proc, timeout=10.0, sig=None)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a benchmark subprocess: ours, with the repo root importable."""
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    if extra:
        env.update(extra)
    return env


def _read_line(proc: subprocess.Popen[bytes], timeout: float, log: Path) -> str:
    assert proc.stdout is not None
    deadline = Deadline(timeout)
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            if deadline.expired:
                raise BenchError(f"the embedded server did not start within {timeout:.0f} s")
            if not sel.select(timeout=max(0.0, deadline.remaining)):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise BenchError(f"the embedded server exited (code {proc.wait(5)}); see {log}")
            buf += chunk
    return buf.split(b"\n", 1)[0].decode().strip()


# -- processes and memory ----------------------------------------------------------------


def stop_process(
    proc: subprocess.Popen[Any],
    *,
    timeout: float,
    sig: signal.Signals | None = signal.SIGTERM,
    group: bool = False,
) -> int | None:
    """Signal ``proc`` (unless ``sig`` is None), wait up to ``timeout``, then SIGKILL.

    ``group``: ``proc`` leads its own process group (``start_new_session=True``); once it
    is gone, whatever is left in the group (a pool of job processes) is killed too, so a
    peer's worker can never outlive its measurement. Returns the exit code, or None when
    the process had to be killed."""
    code: int | None = proc.poll()
    if code is None:
        if sig is not None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc, group)
            proc.wait(10)
            code = None
    if group:
        _kill(proc, group)
    return code


def _kill(proc: subprocess.Popen[Any], group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds ``pid`` has used (from /proc; None where missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def tree_cpu_seconds(pid: int) -> float | None:
    """:func:`cpu_seconds` summed over ``pid`` and its living descendants."""
    values = [cpu_seconds(p) for p in process_tree(pid)]
    known = [v for v in values if v is not None]
    return sum(known) if known else None


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read_status_kb(pid: int, key: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def rss_mb(pid: int) -> float | None:
    """Resident memory of one process in MB, from /proc (None where /proc is missing)."""
    kb = _read_status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux /proc), parents first."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for name in entries:
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces or parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    tree: list[int] = []
    todo = [pid]
    while todo and len(tree) < 10000:
        p = todo.pop(0)
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def tree_rss_mb(pid: int) -> tuple[float, int] | None:
    """Total resident memory of ``pid`` and its descendants, and how many processes."""
    total, count = 0.0, 0
    for p in process_tree(pid):
        mb = rss_mb(p)
        if mb is not None:
            total += mb
            count += 1
    return (total, count) if count else None
