"""Finding the App a worker runs from a string: ``module:attribute`` or just ``module``.

``myproj.tasks:app`` imports ``myproj.tasks`` and takes its ``app`` attribute (dotted
attributes such as ``pkg.mod:holder.app`` work too). ``myproj.tasks`` alone takes the one
:class:`~kaffi.App` defined at the top level of that module, and refuses with a clear
message when there is none or more than one. The current directory is importable, as it
is for ``python -m``.

Worker processes started by the supervisor import the app again by this same string, so
it must name something importable, not an object built at run time.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING

from kaffi.errors import ConfigurationError

if TYPE_CHECKING:
    from kaffi.app import App

__all__ = ["load_app"]


def _ensure_cwd_importable() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def load_app(spec: str) -> App:
    """Import and return the App named by ``spec``; ConfigurationError when it can't."""
    from kaffi.app import App

    module_name, sep, attr = spec.strip().partition(":")
    if not module_name or (sep and not attr):
        raise ConfigurationError(
            f"cannot read app {spec!r}: give it as module:attribute (like myproj.tasks:app) "
            "or as module"
        )
    _ensure_cwd_importable()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise ConfigurationError(
                f"cannot import app module {module_name!r}: no module named {exc.name!r} "
                f"(looked in {os.getcwd()} and sys.path)"
            ) from exc
        raise
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
