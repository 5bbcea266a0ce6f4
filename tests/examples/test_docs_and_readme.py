"""The README's two commands and the documentation site stay true to the repository."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
