"""Finding the App a worker runs from a string: ``module:attribute`` or just ``module``.

``myproj.tasks:app`` imports ``myproj.tasks`` and takes its ``app`` attribute (dotted
attributes such as ``pkg.mod:holder.app`` work too). ``myproj.tasks`` alone takes the one
:class:`~kaffi.App` defined at the top level of that module, and refuses with a clear
message when there is none or more than one. The current directory is importable, as it
is for ``python -m``.

A file path works too (``myproj/tasks.py``, ``./tasks.py:app``, an absolute path): a file
under the current directory is imported as the dotted module it is there
(``myproj.tasks``), so its package imports keep working; a file elsewhere is imported by
its name with its folder put on ``sys.path``.

An app module that raises while it is imported (a SyntaxError, a missing dependency, an
error in its top-level code) is one :class:`~kaffi.errors.AppImportError` line naming the
file, the line and the error, with only the user's own frames kept aside for
``--traceback``: the importlib and kaffi frames around them say nothing to a user.

Worker processes started by the supervisor import the app again by this same string, so
it must name something importable, not an object built at run time.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from kaffi.errors import AppImportError, ConfigurationError

if TYPE_CHECKING:
    from kaffi.app import App

__all__ = ["load_app"]


def _ensure_cwd_importable() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _split_spec(spec: str) -> tuple[str, str, str]:
    """``module[:attr]`` or ``path.py[:attr]``; a Windows drive's colon is not a separator."""
    text = spec.strip()
    drive = len(text) > 1 and text[1] == ":" and text[0].isalpha() and text[2:3] in ("\\", "/")
    head, sep, attr = text[2:].rpartition(":") if drive else text.rpartition(":")
    if drive:
        head = text[:2] + head
    if not sep:
        return text, "", ""
    return head, sep, attr


def _looks_like_path(name: str) -> bool:
    return name.endswith(".py") or "/" in name or os.sep in name


def _module_for_path(name: str) -> str:
    """The module to import for the file ``name``: its dotted name under the current
    directory, else its own name with its folder put first on ``sys.path``."""
    path = Path(name)
    if path.suffix != ".py":
        path = path.with_suffix(".py")
    if not path.is_file():
        raise ConfigurationError(
            f"cannot read app {name!r}: there is no file {str(path)!r}; give the app as "
            "module:attribute (like myproj.tasks:app) or as the path of a .py file"
        )
    path = path.resolve()
    try:
        relative = path.with_suffix("").relative_to(Path.cwd().resolve())
    except ValueError:
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return path.stem
    parts = relative.parts
    if any(not part.isidentifier() for part in parts):
        raise ConfigurationError(
            f"cannot read app {name!r}: {'.'.join(parts)!r} is not an importable module "
            "name; give the app as module:attribute (like myproj.tasks:app)"
        )
    return ".".join(parts)


def _user_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The frames of ``exc``'s traceback that are the user's: not importlib's machinery
    and not this module's."""
    here = os.path.abspath(__file__)
    return [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen ")
        and "importlib" not in Path(frame.filename).parts
        and os.path.abspath(frame.filename) != here
    ]


def _import_error(module_name: str, exc: BaseException) -> AppImportError:
    """One line naming where the import of the app's module failed, and why."""
    frames = _user_frames(exc)
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}, line {exc.lineno}: "
        what = f"{type(exc).__name__}: {exc.msg}"
    else:
        if frames:
            where = f"{frames[-1].filename}, line {frames[-1].lineno}: "
        what = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    details = "".join(traceback.format_list(frames))
    details += "".join(traceback.format_exception_only(type(exc), exc))
    return AppImportError(
        f"cannot import app module {module_name!r}: {where}{what} "
        "(--traceback shows the whole traceback)",
        user_traceback="Traceback (your code, most recent call last):\n" + details,
    )


def load_app(spec: str) -> App:
    """Import and return the App named by ``spec`` (``module[:attr]`` or the path of a
    ``.py`` file, ``[:attr]``); ConfigurationError when it can't, AppImportError when the
    module itself raised while being imported."""
    from kaffi.app import App

    module_name, sep, attr = _split_spec(spec)
    if not module_name or (sep and not attr):
        raise ConfigurationError(
            f"cannot read app {spec!r}: give it as module:attribute (like myproj.tasks:app) "
            "or as module"
        )
    _ensure_cwd_importable()
    if _looks_like_path(module_name):
        module_name = _module_for_path(module_name)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):
            raise ConfigurationError(
                f"cannot import app module {module_name!r}: no module named {exc.name!r} "
                f"(looked in {os.getcwd()} and sys.path)"
            ) from exc
        raise _import_error(module_name, exc) from exc
    except Exception as exc:  # the user's module raised: say where, in one line
        raise _import_error(module_name, exc) from exc
    if sep:
        value: object = module
        for part in attr.split("."):
            try:
                value = getattr(value, part)
            except AttributeError:
                raise ConfigurationError(
                    f"app {spec!r}: module {module_name!r} has no attribute {attr!r}"
                ) from None
        if not isinstance(value, App):
            raise ConfigurationError(f"app {spec!r} is a {type(value).__name__}, not a kaffi.App")
        return value
    found = {name: v for name, v in vars(module).items() if isinstance(v, App)}
    if not found:
        raise ConfigurationError(
            f"module {module_name!r} defines no kaffi.App; name it as {module_name}:ATTRIBUTE"
        )
    distinct = {id(v): name for name, v in found.items()}
    if len(distinct) > 1:
        names = ", ".join(sorted(found))
        raise ConfigurationError(
            f"module {module_name!r} defines several kaffi.App objects ({names}); "
            f"choose one as {module_name}:NAME"
        )
    return next(iter(found.values()))
