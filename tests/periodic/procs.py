"""Real ``kaffi`` processes for the periodic tests, and the app module they load.

:func:`write_app` writes a small app whose ``tick`` task appends each run's occurrence
and jid to a file; :class:`Proc` runs ``python -m kaffi ...`` and lets a test wait, with
a deadline, for a line of its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support import wait_until

APP_SOURCE = '''
import os
from datetime import timedelta

from kaffi import App, current_job

app = App()


@app.task
def tick(n: int) -> None:
    """Record which occurrence ran (one short line: appends of it do not interleave)."""
    job = current_job()
    occurrence = (job.custom or {})["periodic"]["occurrence"]
    with open(os.environ["TICK_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{occurrence} {job.jid} {os.getpid()}\\n")


app.periodic(tick, every=timedelta(seconds=int(os.environ.get("TICK_EVERY", "2"))), args=(1,))
app.periodic(tick, cron="30 2 * * *", tz="Europe/Berlin", name="nightly", args=(2,))
'''


def write_app(folder: Path) -> str:
    """Write the app module into ``folder``; returns its ``module:attribute``."""
    (folder / "periodic_app.py").write_text(APP_SOURCE, encoding="utf-8")
    return "periodic_app:app"


def read_runs(log: Path) -> list[tuple[str, str]]:
    """(occurrence, jid) of every run recorded so far."""
    if not log.exists():
        return []
    runs = []
    for line in log.read_text(encoding="utf-8").splitlines():
        occurrence, jid, _pid = line.split()
        runs.append((occurrence, jid))
    return runs


class Proc:
    """``python -m kaffi ARGS`` in ``cwd``, its output (stdout and stderr together) read by
    a thread so the test can wait for a line."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if k not in ("FAKTORY_URL", "FAKTORY_PROVIDER")}
        self.args = args
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kaffi", *args],
            cwd=cwd,
            env={**base, "PYTHONPATH": str(cwd), "PYTHONUNBUFFERED": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        """Everything printed so far."""
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30) -> float:
        """Wait until a line containing ``text`` was printed; returns the wall-clock time
        when the wait ended."""
        wait_until(
            lambda: any(text in line for line in self.lines) or self.process.poll() is not None,
            f"{text!r} from kaffi {' '.join(self.args)}",
            timeout,
        )
        assert any(text in line for line in self.lines), self.output
        return time.time()

    def wait(self, timeout: float = 30) -> int:
        """Wait for the process to end by itself; returns its exit status."""
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``signum`` and wait for the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return code

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self.process.kill()
        self.process.wait(timeout=30)
