"""mypy sees a wrong ``.delay()`` call as a type error (``Task`` is typed with ParamSpec).

Runs mypy on ``delay_cases.txt`` in a subprocess and compares the lines it flags with
the ``# E: <code>`` markers in that file. The mypy cache lives in pytest's cache
directory, so only the first run pays for analysing kaffi and pydantic.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("delay_cases.txt")
_MARK = re.compile(r"#\s*E:\s*([\w-]+)\s*$")
_ERROR = re.compile(r"^[^:]+:(\d+): error: .*\[([\w-]+)\]$")


def expected_errors(text: str) -> set[tuple[int, str]]:
    return {
        (number, match.group(1))
        for number, line in enumerate(text.splitlines(), 1)
        if (match := _MARK.search(line))
    }


@pytest.mark.slow
def test_wrong_delay_calls_are_type_errors(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    if shutil.which("mypy", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("mypy is not installed next to this Python")
    source = tmp_path / "delay_cases.py"
    source.write_text(CASES.read_text())
    # pytest's cache plugin may be off (-p no:cacheprovider): then a cold cache in tmp_path.
    cache_plugin = getattr(pytestconfig, "cache", None)
    cache = cache_plugin.mkdir("kaffi-mypy") if cache_plugin is not None else tmp_path / "cache"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--no-color-output",
            "--config-file=",
            f"--cache-dir={cache}",
            str(source),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=50,
        check=False,
    )
    found = set()
    for line in result.stdout.splitlines():
        match = _ERROR.match(line)
        if match:
            found.add((int(match.group(1)), match.group(2)))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    assert found == expected_errors(CASES.read_text()), result.stdout
