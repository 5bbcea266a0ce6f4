"""Finding the App from ``module:attribute`` or ``module``."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from kaffi.app import App
from kaffi.errors import AppImportError, ConfigurationError
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


def test_a_missing_dependency_of_the_app_module_names_the_file_and_line(project: Path) -> None:
    name = write_module(project, "import os\nimport no_such_dependency_kaffi\n")
    with pytest.raises(AppImportError) as caught:
        load_app(name)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{project / name}.py, line 2: " in message
    assert "ModuleNotFoundError: No module named 'no_such_dependency_kaffi'" in message
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_a_syntax_error_names_the_file_and_line(project: Path) -> None:
    name = write_module(project, "import kaffi\napp = kaffi.App()\ndef broken(:\n")
    with pytest.raises(AppImportError, match=r"\.py, line 3: SyntaxError: ") as caught:
        load_app(f"{name}:app")
    assert name in str(caught.value)


def test_an_error_in_top_level_code_keeps_only_the_users_frames(project: Path) -> None:
    helper = write_module(project, "def explode():\n    raise RuntimeError('no config')\n")
    name = write_module(project, f"import {helper}\n\n{helper}.explode()\n")
    with pytest.raises(AppImportError) as caught:
        load_app(name)
    err = caught.value
    assert f"{project / helper}.py, line 2: RuntimeError: no config" in str(err)
    # The user's two frames, innermost last; nothing of importlib's or kaffi's.
    assert f"{name}.py" in err.user_traceback
    assert f"{helper}.py" in err.user_traceback
    assert "importlib" not in err.user_traceback
    assert "loader.py" not in err.user_traceback
    assert err.user_traceback.rstrip().endswith("RuntimeError: no config")


def test_a_module_named_like_the_start_of_a_missing_one_is_not_confused(
    project: Path,
) -> None:
    # "tasks" imports the missing "task": that is the module's own error, not "no module
    # named 'task'" for the app.
    pkg = project / f"pkg_{uuid.uuid4().hex[:8]}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(f"import {pkg.name}.task\n")
    with pytest.raises(AppImportError, match=r"tasks\.py, line 1: ModuleNotFoundError"):
        load_app(f"{pkg.name}.tasks")


def test_a_path_under_the_current_directory_is_its_dotted_module(project: Path) -> None:
    pkg = project / f"pkg_{uuid.uuid4().hex[:8]}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "helpers.py").write_text("VALUE = 7\n")
    # The app module imports a sibling through its package: only works when it is
    # imported as pkg.app, not as a loose app.py.
    (pkg / "app.py").write_text(
        f"import kaffi\nfrom {pkg.name} import helpers\napp = kaffi.App()\nv = helpers.VALUE\n"
    )
    app = load_app(f"{pkg.name}/app.py")
    assert app is sys.modules[f"{pkg.name}.app"].app
    assert load_app(f"./{pkg.name}/app.py:app") is app
    assert load_app(f"{pkg.name}/app:app") is app


def test_a_path_elsewhere_is_imported_from_its_folder(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    name = f"kaffi_far_{uuid.uuid4().hex[:10]}"
    (elsewhere / f"{name}.py").write_text("import kaffi\nworker_app = kaffi.App()\n")
    app = load_app(str(elsewhere / f"{name}.py"))
    assert app is sys.modules[name].worker_app


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_such_dir/app.py", "there is no file 'no_such_dir/app.py'"),
        ("my-project/app.py", "'my-project.app' is not an importable module name"),
    ],
)
def test_bad_paths_say_what_is_wrong(project: Path, spec: str, needle: str) -> None:
    (project / "my-project").mkdir()
    (project / "my-project" / "app.py").write_text("import kaffi\napp = kaffi.App()\n")
    with pytest.raises(ConfigurationError, match=needle):
        load_app(spec)
