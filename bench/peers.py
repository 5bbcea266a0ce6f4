"""The other Faktory clients: installed into ``bench/.env/`` by the suite, then driven.

- Node ``faktory-worker`` 4.7.1 with npm into ``bench/.env/node`` (``npm install
  --prefix``), run as ``node bench/drivers/faktory_worker.js`` with ``NODE_PATH`` there;
- the PyPI ``faktory`` 1.0.0 and ``pyfaktory`` 0.2.13 packages with pip into the virtualenv
  ``bench/.env/venv``, which also gets matplotlib for the chart and py-spy for
  ``python -m bench.profile``.

``bench/.env/`` is gitignored and nothing is ever installed into the repository tree
proper or into kaffi's own environment. Each peer runs in its own process, so its speed
is its own, whatever interpreter or runtime it needs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import REPO_ROOT, BenchError, Throughput, child_env

__all__ = [
    "ENV_DIR",
    "NODE_DIR",
    "NODE_CLIENT",
    "PYFAKTORY_CLIENT",
    "PYPI_FAKTORY_CLIENT",
    "VENV_DIR",
    "Peer",
    "available_peers",
    "install",
    "venv_python",
]

ENV_DIR = REPO_ROOT / "bench" / ".env"
NODE_DIR = ENV_DIR / "node"
VENV_DIR = ENV_DIR / "venv"

NODE_VERSION = "4.7.1"
PYPI_FAKTORY_VERSION = "1.0.0"
PYFAKTORY_VERSION = "0.2.13"
#: What the bench virtualenv gets: the two Python peers, the chart library and the
#: profiler ``python -m bench.profile`` drives.
VENV_REQUIREMENTS = (
    f"faktory=={PYPI_FAKTORY_VERSION}",
    f"pyfaktory=={PYFAKTORY_VERSION}",
    "matplotlib>=3.7",
    "py-spy>=0.3.14",
)

NODE_CLIENT = f"Node faktory-worker {NODE_VERSION}"
PYPI_FAKTORY_CLIENT = f"faktory {PYPI_FAKTORY_VERSION} (PyPI)"
PYFAKTORY_CLIENT = f"pyfaktory {PYFAKTORY_VERSION}"


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


@dataclass
class Peer:
    """One other client: how to run its driver and which operations it has."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    #: Driver operations this client supports (``push``, ``push_bulk``, ``push_threads``,
    #: ``push_async``, ``work``).
    ops: frozenset[str] = frozenset()

    def enqueue(self, op: str, n: int, url: str, *, operation: str, timeout: float) -> Throughput:
        """Run the driver's enqueue ``op`` for ``n`` jobs and read its timing line."""
        proc = subprocess.run(
            [*self.argv, op, str(n), "default"],
            cwd=REPO_ROOT,
            env=child_env({**self.env, "FAKTORY_URL": url}),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"{self.name} {op} exited {proc.returncode}: {' | '.join(tail)}")
        lines = proc.stdout.decode().strip().splitlines()
        try:
            doc = json.loads(lines[-1])
            cpu = doc.get("cpu")
            return Throughput(
                operation,
                self.name,
                int(doc["jobs"]),
                float(doc["seconds"]),
                client_cpu=None if cpu is None else float(cpu),
            )
        except (IndexError, ValueError, KeyError, TypeError):
            raise BenchError(f"{self.name} {op} printed no timing line: {lines[-3:]!r}") from None

    def spawner(self, url: str, log: Path) -> Callable[[str], subprocess.Popen[bytes]]:
        """Start this client's worker on a queue (for :func:`bench.workers.drain`)."""

        def spawn(queue: str) -> subprocess.Popen[bytes]:
            with log.open("ab") as out:
                return subprocess.Popen(
                    [*self.argv, "work", "0", queue],
                    cwd=REPO_ROOT,
                    env=child_env({**self.env, "FAKTORY_URL": url}),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,  # its own group: stop_process kills what it leaves
                )

        return spawn


def _node_installed() -> bool:
    package = NODE_DIR / "node_modules" / "faktory-worker" / "package.json"
    if shutil.which("node") is None or not package.is_file():
        return False
    try:
        return bool(json.loads(package.read_text()).get("version") == NODE_VERSION)
    except ValueError:
        return False


def _venv_has(module: str) -> bool:
    python = venv_python()
    if not python.is_file():
        return False
    probe = subprocess.run(
        [str(python), "-c", f"import {module}"], capture_output=True, timeout=60, check=False
    )
    return probe.returncode == 0


def available_peers() -> list[Peer]:
    """The peers installed in ``bench/.env/`` right now (installs nothing)."""
    peers = []
    if _node_installed():
        peers.append(
            Peer(
                NODE_CLIENT,
                ["node", str(REPO_ROOT / "bench" / "drivers" / "faktory_worker.js")],
                env={"NODE_PATH": str(NODE_DIR / "node_modules")},
                ops=frozenset({"push", "push_bulk", "push_async", "work"}),
            )
        )
    python = str(venv_python())
    if _venv_has("faktory"):
        peers.append(
            Peer(
                PYPI_FAKTORY_CLIENT,
                [python, "-m", "bench.drivers.pypi_faktory"],
                ops=frozenset({"push", "push_threads", "work"}),
            )
        )
    if _venv_has("pyfaktory"):
        peers.append(
            Peer(
                PYFAKTORY_CLIENT,
                [python, "-m", "bench.drivers.pyfaktory_driver"],
                ops=frozenset({"push", "push_bulk", "push_threads", "work"}),
            )
        )
    return peers


def install(log: Callable[[str], None]) -> list[str]:
    """Install whatever is missing into ``bench/.env/``; return one problem per failure
    (an empty list when everything is there). Never raises for a failed install: the
    suite then runs without that peer and says so."""
    problems: list[str] = []
    ENV_DIR.mkdir(parents=True, exist_ok=True)
    if not _node_installed():
        if shutil.which("npm") is None or shutil.which("node") is None:
            problems.append("Node faktory-worker: node and npm are not installed")
        else:
            log(f"installing faktory-worker@{NODE_VERSION} into {NODE_DIR} (npm)")
            NODE_DIR.mkdir(parents=True, exist_ok=True)
            problems += _run(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(NODE_DIR),
                    f"faktory-worker@{NODE_VERSION}",
                ],
                "npm install faktory-worker",
                cwd=NODE_DIR,
            )
    have_all = all(_venv_has(m) for m in ("faktory", "pyfaktory", "matplotlib"))
    if not (have_all and (VENV_DIR / "bin" / "py-spy").is_file()):
        if not venv_python().is_file():
            log(f"creating the bench virtualenv {VENV_DIR}")
            problems += _run([sys.executable, "-m", "venv", str(VENV_DIR)], "python -m venv")
        if venv_python().is_file():
            log(f"installing {', '.join(VENV_REQUIREMENTS)} into {VENV_DIR} (pip)")
            problems += _run(
                [str(venv_python()), "-m", "pip", "install", "--quiet", *VENV_REQUIREMENTS],
                "pip install",
            )
    return problems


def _run(argv: list[str], what: str, *, cwd: Path | None = None) -> list[str]:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"{what} failed: {exc}"]
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return [f"{what} exited {proc.returncode}: {' | '.join(tail)}"]
    return []
