"""``kaffi worker APP`` when APP is a path or fails to import (issue 14, items 8 and 9)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaffi.cli import main


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return tmp_path


def broken_app(root: Path) -> str:
    name = f"kaffi_broken_{uuid.uuid4().hex[:10]}"
    (root / f"{name}.py").write_text(
        "import kaffi\napp = kaffi.App()\nraise KeyError('DATABASE_URL')\n"
    )
    return name


def test_an_app_that_fails_to_import_is_one_line(project: Path) -> None:
    name = broken_app(project)
    result = CliRunner().invoke(main, ["worker", f"{name}:app", "--url", "tcp://127.0.0.1:1"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"kaffi: error: cannot import app module {name!r}: {project / name}.py, line 3: "
        "KeyError: 'DATABASE_URL' (--traceback shows the whole traceback)"
    ]
    assert "Traceback" not in result.output


def test_traceback_shows_the_users_frames_only(project: Path) -> None:
    name = broken_app(project)
    result = CliRunner().invoke(main, ["worker", f"{name}.py", "--traceback"])
    assert result.exit_code == 1
    err = result.stderr
    assert err.startswith("Traceback (your code, most recent call last):\n")
    assert f'File "{project / name}.py", line 3, in <module>' in err
    assert "importlib" not in err
    assert "click" not in err
    assert err.strip().splitlines()[-1].startswith("kaffi: error: cannot import app module")


def test_a_path_to_a_file_that_is_not_there_says_so(project: Path) -> None:
    result = CliRunner().invoke(main, ["worker", "myproj/app.py"])
    assert result.exit_code == 1
    assert "there is no file 'myproj/app.py'" in result.stderr
