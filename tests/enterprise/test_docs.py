"""docs/enterprise.md stays true: its Python samples run as written against an Enterprise
server, and its throttles samples are what ``kaffi server --enterprise`` reads and says."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_command

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "enterprise.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)


@pytest.mark.slow
def test_the_python_samples_run_as_written(tmp_path: Path, faktory_enterprise_server: Any) -> None:
    """The page's samples build on each other (one ``app``), as a reader types them in one
    file: run together, they must not fail (a name a sample uses and never defines would)."""
    samples = blocks("python")
    assert len(samples) >= 4
    (tmp_path / "samples.py").write_text("\n\n".join(samples), encoding="utf-8")
    result = run_command(
        sys.executable, "samples.py", cwd=tmp_path, url=faktory_enterprise_server.url
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # The unique sample's duplicate was refused, and the batch status printed its counts.
    assert "sync_account Job not unique" in result.stdout
    assert "not enqueued not enqueued" in result.stdout


def test_the_throttles_samples_are_what_the_server_reads_and_says(tmp_path: Path) -> None:
    [toml_sample] = blocks("toml")
    [error_sample] = blocks("text")
    from kaffi.server.throttles import load_throttles

    (tmp_path / "throttles.toml").write_text(toml_sample, encoding="utf-8")
    limits = load_throttles(tmp_path / "throttles.toml")
    assert limits["default"].describe() == {"concurrency": 2, "timeout": 60}
    assert limits["image-processing"].describe() == {"worker": 1, "timeout": 600}
    # The error sample: the first throttle with its timeout left out.
    broken = "[throttles]\ndefault = { concurrency = 2 }\n"
    (tmp_path / "throttles.toml").write_text(broken, encoding="utf-8")
    result = run_command(
        sys.executable,
        "-m",
        "kaffi",
        "server",
        "--enterprise",
        "--memory",
        "--no-web",
        "--bind",
        "127.0.0.1:0",
        "--throttles",
        "throttles.toml",
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == error_sample.strip()
