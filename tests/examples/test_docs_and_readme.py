"""The README's two commands and the documentation site stay true to the repository."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaffi import Client
from tests.support import run_command

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_COMMAND = "python -m pip install . && python examples/quickstart.py"
TEST_COMMAND = 'python -m pip install -e ".[dev]" && python -m pytest'


def test_readme_has_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
        for line in block.splitlines()
        if "pip install" in line
    ]
    assert commands == [QUICKSTART_COMMAND, TEST_COMMAND]
    assert (ROOT / "examples" / "quickstart.py").is_file()
    assert "real Faktory" in readme


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert TEST_COMMAND in [line.strip() for line in ci.splitlines()]


def test_every_docs_page_is_in_the_nav() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    listed = set(re.findall(r":\s*([\w/.-]+\.md)\s*$", config, flags=re.MULTILINE))
    assert pages == listed


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings_handlers") is None,
    reason='needs the docs extra: pip install -e ".[docs]"',
)
def test_docs_build_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "reference" / "client" / "index.html").is_file()


def readme_blocks(language: str) -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(rf"```{language}\n(.*?)```", readme, flags=re.DOTALL)


@pytest.mark.slow
def test_readme_user_lines_work_as_written(
    tmp_path: Path, faktory_server: Any, kaffi_client: Client
) -> None:
    """The README's tasks.py, its .delay() calls and its `kaffi worker` line, run as given
    (FAKTORY_URL pointing at the test server; --burst so the worker stops by itself)."""
    tasks_block, calls_block = readme_blocks("python")
    assert tasks_block.startswith("# tasks.py\n")
    (tmp_path / "tasks.py").write_text(tasks_block, encoding="utf-8")
    (tmp_path / "calls.py").write_text(calls_block, encoding="utf-8")
    [worker_line] = [
        line.strip()
        for block in readme_blocks("bash")
        for line in block.splitlines()
        if line.strip().startswith("kaffi worker ")
    ]

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return run_command(
            *command,
            cwd=tmp_path,
            url=faktory_server.url,
            extra_env={"PYTHONPATH": str(tmp_path)},
        )

    pushed = run(sys.executable, "calls.py")
    assert pushed.returncode == 0, pushed.stderr
    worker = run(sys.executable, "-m", "kaffi", *shlex.split(worker_line)[1:], "--burst")
    assert worker.returncode == 0, worker.stderr
    # send_welcome ran; charge was scheduled a minute ahead and waits in the scheduled set.
    assert "welcome mail to ada@example.com for user 42" in worker.stdout
    assert kaffi_client.info().faktory.sets.get("scheduled") == 1


def test_python_snippets_in_the_docs_are_valid_python() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for number, block in enumerate(re.findall(r"```python[^\n]*\n(.*?)```", text, re.DOTALL)):
            compile(block, f"{page.name} python block {number + 1}", "exec")
            checked += 1
    assert checked >= 15
