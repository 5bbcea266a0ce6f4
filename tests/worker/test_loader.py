"""Finding the App from ``module:attribute`` or ``module``."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from kaffi.app import App
from kaffi.errors import ConfigurationError
from kaffi.worker.loader import load_app


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    return tmp_path


def write_module(root: Path, source: str) -> str:
    name = f"kaffi_loader_{uuid.uuid4().hex[:10]}"
    (root / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_module_colon_attribute(project: Path) -> None:
    name = write_module(project, "import kaffi\napp = kaffi.App()\nother = 1\n")
    app = load_app(f"{name}:app")
    assert isinstance(app, App)
    assert app is sys.modules[name].app


def test_dotted_module_and_nested_attribute(project: Path) -> None:
    pkg = project / f"pkg_{uuid.uuid4().hex[:8]}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text("import kaffi\nclass Holder:\n    app = kaffi.App()\n")
    app = load_app(f"{pkg.name}.tasks:Holder.app")
    assert isinstance(app, App)


def test_module_alone_finds_its_one_app(project: Path) -> None:
    name = write_module(project, "import kaffi\nmy_app = kaffi.App()\nalias = my_app\n")
    assert load_app(name) is sys.modules[name].my_app


@pytest.mark.parametrize(
    ("source", "suffix", "needle"),
    [
        ("x = 1\n", "", "defines no kaffi.App"),
        (
            "import kaffi\na = kaffi.App()\nb = kaffi.App()\n",
            "",
            r"several kaffi.App objects \(a, b\)",
        ),
        ("import kaffi\napp = kaffi.App()\n", ":nope", "has no attribute 'nope'"),
        ("app = 42\n", ":app", "is a int, not a kaffi.App"),
    ],
)
def test_clear_errors(project: Path, source: str, suffix: str, needle: str) -> None:
    name = write_module(project, source)
    with pytest.raises(ConfigurationError, match=needle):
        load_app(name + suffix)


@pytest.mark.parametrize("spec", ["", ":app", "mod:"])
def test_malformed_specs(project: Path, spec: str) -> None:
    with pytest.raises(ConfigurationError, match="module:attribute"):
        load_app(spec)


def test_missing_module_names_itself(project: Path) -> None:
    with pytest.raises(ConfigurationError, match="no module named 'no_such_module_kaffi'"):
        load_app("no_such_module_kaffi:app")


def test_an_import_error_inside_the_app_module_is_not_hidden(project: Path) -> None:
    name = write_module(project, "import no_such_dependency_kaffi\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_kaffi"):
        load_app(name)
