"""Shared pieces of the reliability suite: deadlines, raw sessions, subprocesses, tallies.

Everything here is loopback-only and bounded: every wait has a deadline, every
subprocess is killed in a ``finally`` if a test leaves it running, and nothing sleeps to
synchronise (we poll INFO, files or log lines until a deadline).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kaffi.protocol.commands import password_hash
from kaffi.protocol.resp import ErrorReply, Reply, ReplyParser, SimpleReply
from tests.support import WAIT, LogLines, wait_until

# -- raw protocol sessions -------------------------------------------------------------------


class SessionClosed(Exception):
    """The server closed the connection before a whole reply arrived."""


class RawSession:
    """One blocking connection speaking raw lines, with kaffi's own reply parser.

    For hostile-input tests: it sends exactly the bytes it is given and hands back each
    reply frame, so a test can compare them with Faktory 1.10.0's.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.parser = ReplyParser()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> Reply:
        while True:
            reply = self.parser.next_reply()
            if reply is not None:
                return reply
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise SessionClosed("the server closed the connection")
            self.parser.feed(chunk)

    def request(self, line: bytes) -> Reply:
        self.send(line)
        return self.reply()

    def hello(self, *, password: str | None = None, wid: str | None = None) -> None:
        """Read HI and answer HELLO (with the pwdhash when the server asks for one)."""
        hi = self.reply()
        assert isinstance(hi, SimpleReply), hi
        assert hi.text.startswith("HI "), hi
        doc = json.loads(hi.text[3:])
        body: dict[str, Any] = {"v": 2, "hostname": "reliability", "pid": os.getpid()}
        if wid:
            body["wid"] = wid
            body["labels"] = ["reliability"]
        if "s" in doc:
            body["pwdhash"] = password_hash(password or "", doc["s"], int(doc["i"]))
        answer = self.request(
            b"HELLO " + json.dumps(body, separators=(",", ":")).encode() + b"\r\n"
        )
        assert answer == SimpleReply("OK"), answer

    def at_eof(self, timeout: float = 5.0) -> bool:
        """True if the server closes the connection (without sending more) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return data == b"" and self.parser.buffered == 0


def show(reply: Reply) -> str:
    """A reply as the wire shows it, for assertion messages."""
    if isinstance(reply, SimpleReply):
        return "+" + reply.text
    if isinstance(reply, ErrorReply):
        return f"-{reply.code} {reply.message}"
    if reply.data is None:
        return "$-1"
    return "$" + reply.data.decode("utf-8", "replace")[:300]


def is_err(reply: Reply, message: str | None = None) -> bool:
    if not isinstance(reply, ErrorReply) or reply.code != "ERR":
        return False
    return message is None or reply.message == message


# -- tallies -------------------------------------------------------------------------------


@dataclass
class Tally:
    """What was pushed and what ran, and the figures every assertion message carries."""

    pushed: set[str] = field(default_factory=set)
    push_errors: int = 0
    runs: Counter[str] = field(default_factory=Counter)

    def record_runs(self, jids: Iterable[str]) -> None:
        self.runs = Counter(jids)

    @property
    def processed(self) -> int:
        return len(set(self.runs) & self.pushed)

    @property
    def lost(self) -> set[str]:
        return self.pushed - set(self.runs)

    @property
    def duplicated(self) -> int:
        return sum(1 for jid, n in self.runs.items() if n > 1)

    @property
    def unexpected(self) -> set[str]:
        return set(self.runs) - self.pushed

    def figures(self, *, final: bool = True, **extra: object) -> str:
        """pushed/processed/lost/duplicated and ``extra``, for assertion messages. Before
        the end (``final=False``) a job that has not run yet is not lost: it is counted
        as ``not_run_yet``."""
        missing = "lost" if final else "not_run_yet"
        parts = [
            f"pushed={len(self.pushed)}",
            f"push_errors={self.push_errors}",
            f"processed={self.processed}",
            f"{missing}={len(self.lost)}",
            f"duplicated={self.duplicated}",
            f"runs={sum(self.runs.values())}",
        ]
        parts += [f"{k}={v}" for k, v in extra.items()]
        lost = sorted(self.lost)[:5]
        if lost and final:
            parts.append(f"lost e.g. {lost}")
        return ", ".join(parts)


def read_lines(path: Path) -> list[str]:
    """The complete lines of a file several processes append to (a torn last line is skipped)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]


def sets_and_queues(info: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    faktory = info["faktory"]
    return dict(faktory["sets"]), dict(faktory["queues"])


# -- subprocesses ------------------------------------------------------------------------------

#: The task module the worker subprocesses run. Each task appends its jid to $RELIABILITY_OUT
#: with one small O_APPEND write, atomic between processes, when (and only when) it finishes.
APP_SOURCE = """
import os
import resource
import time

import kaffi

app = kaffi.App()
OUT = os.environ["RELIABILITY_OUT"]
GATE = os.environ.get("RELIABILITY_GATE", "")


def _done(tag=""):
    line = kaffi.current_job().jid + (" " + tag if tag else "") + "\\n"
    fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@app.task(reserve_for=60)
def work(n: int, seconds: float) -> None:
    time.sleep(seconds)
    _done()


@app.task(reserve_for=60)
def gated(n: int) -> None:
    # Holds its slot until the test opens the gate (bounded, so a broken test cannot hang).
    deadline = time.monotonic() + 45
    while GATE and not os.path.exists(GATE) and time.monotonic() < deadline:
        time.sleep(0.02)
    _done()


@app.task(reserve_for=60)
def started(n: int) -> None:
    _done("started")
    time.sleep(300)


@app.task(reserve_for=60)
def hog(megabytes: int) -> None:
    # Cap this process's address space just above what it uses, then ask for far more:
    # the allocation fails at once instead of threatening the machine.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + 64 * 1024 * 1024, hard))
    try:
        block = bytearray(megabytes * 1024 * 1024)
        block[0] = 1
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    _done("hog-survived")


@app.task(reserve_for=60)
def exit_once(marker: str) -> None:
    # The first run ends the whole process without any cleanup; the rerun succeeds.
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write("exited")
        os._exit(3)
    _done("rerun")
"""


@dataclass
class Project:
    """A directory with ``rel_app.py`` for ``kaffi worker rel_app:app`` to run."""

    root: Path
    out: Path
    gate: Path

    @classmethod
    def create(cls, root: Path) -> Project:
        (root / "rel_app.py").write_text(textwrap.dedent(APP_SOURCE))
        return cls(root=root, out=root / "out.txt", gate=root / "gate")

    def env(self, url: str) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("FAKTORY_PROVIDER", "FAKTORY_PASSWORD", "KAFFI_TEST_URL"):
            env.pop(name, None)
        env["FAKTORY_URL"] = url
        env["RELIABILITY_OUT"] = str(self.out)
        env["RELIABILITY_GATE"] = str(self.gate)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def runs(self) -> list[str]:
        """jids of finished jobs (one per run; a jid twice means it ran twice)."""
        return [line.split(" ", 1)[0] for line in read_lines(self.out)]

    def tagged(self, tag: str) -> list[str]:
        return [line.split(" ", 1)[0] for line in read_lines(self.out) if line.endswith(" " + tag)]


class Proc:
    """A ``python -m kaffi ...`` subprocess with its output collected."""

    def __init__(self, args: Sequence[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.args = list(args)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "kaffi", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert self.popen.stdout is not None
        self.log = LogLines(self.popen.stdout)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, signum)

    def wait(self, timeout: float) -> int:
        """The exit status; fails (and kills) if the process outlives ``timeout``."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"`kaffi {' '.join(self.args)}` still running after {timeout:g}s; output:\n"
                + "\n".join(self.log.lines[-30:])
            ) from None

    def kill(self) -> None:
        """SIGKILL and reap, with any children it left (a supervisor's worker processes
        run in their own process groups, so they are found through /proc)."""
        if self.alive():
            children = child_pids(self.popen.pid)
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            kill_all(children)
        try:
            self.popen.wait(WAIT)
        except subprocess.TimeoutExpired:
            pass
        self.log.finish()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@contextmanager
def kaffi_process(args: Sequence[str], *, cwd: Path, env: dict[str, str]) -> Iterator[Proc]:
    """Run ``python -m kaffi ARGS``; always killed and reaped when the block ends."""
    proc = Proc(args, cwd=cwd, env=env)
    try:
        yield proc
    finally:
        proc.kill()


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux /proc), for killing a supervisor's workers."""
    children: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(entry))
    return children


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def wait_listening(port: int, proc: Proc | None = None, timeout: float = WAIT) -> None:
    """Poll until a server on 127.0.0.1:``port`` sends its greeting (fail fast if the
    process we started for it has exited)."""

    def greets() -> bool:
        try:
            with RawSession("127.0.0.1", port, timeout=2) as raw:
                raw.reply()
                return True
        except (OSError, SessionClosed):
            if proc is not None and not proc.alive():
                raise AssertionError(
                    f"the server process exited ({proc.popen.returncode}):\n" + proc.log.text()
                ) from None
            return False

    wait_until(greets, f"a server listening on 127.0.0.1:{port}", timeout)


def server_args(port: int, data: Path, *extra: str) -> list[str]:
    return [
        "server",
        "--bind",
        f"127.0.0.1:{port}",
        "--data",
        str(data),
        "--log-level",
        "info",
        *extra,
    ]
