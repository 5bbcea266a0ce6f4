"""Other Faktory clients against the embedded server (opt-in: ``pytest -m compat``).

- PyPI ``faktory`` and ``pyfaktory`` (the latter also against ``enterprise=True``: its
  batches and a unique job): run with ``$KAFFI_COMPAT_PYTHON`` (an interpreter
  that has them; see ``run.sh``), or with this interpreter if it can import them.
- Node ``faktory-worker``: run when ``node`` exists and ``$KAFFI_COMPAT_NODE_MODULES``
  names a ``node_modules`` folder holding it, or, with ``KAFFI_COMPAT=1``, after an
  ``npm install`` into a temporary folder (never into the repository).

Each skips with the reason when its tool is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaffi.server import EmbeddedServer

pytestmark = pytest.mark.compat
HERE = Path(__file__).resolve().parent
TOTAL = 50


def _python_with(module: str) -> str:
    configured = os.environ.get("KAFFI_COMPAT_PYTHON")
    if configured:
        probe = subprocess.run(
            [configured, "-c", f"import {module}"], capture_output=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return configured
        pytest.skip(f"{configured} cannot import {module}")
    if importlib.util.find_spec(module) is not None:
        return sys.executable
    pytest.skip(
        f"PyPI {module!r} is not installed (set KAFFI_COMPAT_PYTHON, see tests/compat/run.sh)"
    )


def _run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=55, check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def _drained(srv: EmbeddedServer, queue: str) -> None:
    info = srv.info()["faktory"]
    assert info["queues"][queue] == 0
    assert info["sets"]["working"] == 0


def test_pypi_faktory(srv: EmbeddedServer) -> None:
    python = _python_with("faktory")
    summary = _run([python, str(HERE / "pypi_faktory.py"), srv.url, str(TOTAL)])
    assert summary["done"] == TOTAL
    assert summary["sum"] == 2 * sum(range(TOTAL))
    assert summary["beat"] == "OK"
    _drained(srv, "compat-faktory")


def test_pypi_pyfaktory(srv: EmbeddedServer) -> None:
    python = _python_with("pyfaktory")
    summary = _run([python, str(HERE / "pypi_pyfaktory.py"), srv.url, str(TOTAL)])
    assert summary["rejected"] == {}
    assert summary["done"] == TOTAL + 1
    assert summary["sum"] == 2 * sum(range(TOTAL))
    assert summary["queued"] == 0
    _drained(srv, "compat-pyfaktory")


def test_pypi_pyfaktory_enterprise(ent_srv: EmbeddedServer) -> None:
    python = _python_with("pyfaktory")
    summary = _run([python, str(HERE / "pypi_pyfaktory_enterprise.py"), ent_srv.url, "10"])
    assert summary["enterprise"] is True
    hand = summary["by_hand"]
    # BATCH NEW's reply is a bulk string, the BID (pyfaktory hands the raw reply back).
    assert hand["new_reply_kind"] == "$"
    assert re.fullmatch(r"b-[A-Za-z0-9_-]{14}", hand["bid"])
    assert hand["committed"] is hand["reopened"] is hand["reopen_after_callbacks"] is True
    assert hand["status_keys"] == sorted(
        [
            *("bid", "description", "created_at", "total", "pending", "failed"),
            *("complete_st", "success_st"),
        ]
    )
    assert hand["description"] == "compat by-hand"
    # [total, pending, failed, complete_st, success_st]; OPEN let five more jobs in.
    assert hand["after_commit"] == [5, 5, 0, "", ""]
    assert hand["after_reopen"] == [10, 10, 0, "", ""]
    assert hand["after_jobs"] == [10, 0, 0, "1", ""]
    assert hand["sum"] == 2 * sum(range(10))
    assert hand["job_bids"] == [hand["bid"]]
    callback = {"args": ["by-hand"], "waiting": 1, "_bid": True, "has_bid": False}
    assert hand["callbacks"] == [
        {"jobtype": "compat.complete", **callback, "status_after_ack": [10, 0, 0, "2", "1"]},
        {"jobtype": "compat.success", **callback, "status_after_ack": [10, 0, 0, "2", "2"]},
    ]
    # pyfaktory raises FaktroyWorkProtocolError with the raw error line.
    refused = "Error received from Faktory server: -ERR no such batch b-nope"
    assert hand["unknown_status"] == hand["unknown_open"] == refused
    assert summary["by_consumer"] == {
        "finished": True,
        "status": [10, 0, 0, "2", "2"],
        "queued": 0,
    }
    not_unique = "Error received from Faktory server: -NOTUNIQUE Job not unique"
    assert summary["unique"] == {
        "first": True,
        "duplicate": not_unique,
        "while_running": not_unique,
        "after_ack": True,
        "queued": 1,
    }
    info = ent_srv.info()["faktory"]
    assert info["queues"]["compat-ent"] == info["queues"]["compat-ent-cb"] == 0
    assert info["sets"]["working"] == 0


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    configured = os.environ.get("KAFFI_COMPAT_NODE_MODULES")
    if configured:
        path = Path(configured)
        if not (path / "faktory-worker").is_dir():
            pytest.skip(f"{path} has no faktory-worker")
        return path
    if os.environ.get("KAFFI_COMPAT") != "1" or shutil.which("npm") is None:
        pytest.skip("set KAFFI_COMPAT=1 (and have npm) to npm install faktory-worker")
    folder = tmp_path_factory.mktemp("npm")
    subprocess.run(
        [
            "npm",
            "install",
            "--silent",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(folder),
            "faktory-worker@4",
        ],
        check=True,
        capture_output=True,
        timeout=50,
    )
    return folder / "node_modules"


def test_node_faktory_worker(srv: EmbeddedServer, node_modules: Path) -> None:
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    summary = _run(["node", str(HERE / "node_faktory_worker.js"), srv.url, str(TOTAL)], env=env)
    sizes = summary.pop("sizes")
    assert summary == {"done": TOTAL, "failed": 1, "sum": 2 * sum(range(TOTAL))}
    # Read by the Node client from INFO's tasks block, as its own tests do (issue 20).
    assert sizes == {"scheduled": 1, "retries": 1}
    _drained(srv, "default")
    assert srv.info()["faktory"]["total_failures"] == 2
