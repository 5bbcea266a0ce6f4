"""The import graph reads top-down: cli -> worker/testing -> app -> client/server ->
protocol -> errors, with periodic (schedules, the Beat loop) above app and contrib (the
optional integrations) beside cli: no layer below imports it, but for the one arrow back
that ``App(tracing=True)`` needs. Every ``import`` statement of every module counts,
wherever it is (module level, inside a function, under ``if TYPE_CHECKING:``), and every
module is under a rule (a new top-level module or package needs one).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import kaffi

PACKAGE = Path(kaffi.__file__).parent

#: The worker's parts behind its manager: integrations see a worker through
#: ``Worker``, ``WorkerEvents`` and ``job_log_fields`` only.
WORKER_INTERNALS = (
    "kaffi.worker.processor",
    "kaffi.worker.lifecycle",
    "kaffi.worker.connections",
    "kaffi.worker.shutdown",
    "kaffi.worker.backoff",
    "kaffi.worker.threads",
    "kaffi.worker.signals",
    "kaffi.worker.options",
    "kaffi.worker.queues",
    "kaffi.worker.supervisor",
    "kaffi.worker.loader",
)

#: Package (or module) prefix -> the kaffi packages it must never import. Every rule
#: whose prefix names a module applies to it.
FORBIDDEN = {
    "kaffi.errors": ("kaffi.",),
    "kaffi._procinfo": ("kaffi.",),
    "kaffi._bases": ("kaffi.",),
    "kaffi._version": ("kaffi.",),
    "kaffi.protocol": (
        "kaffi.app",
        "kaffi.worker",
        "kaffi.server",
        "kaffi.client",
        "kaffi.testing",
        "kaffi.periodic",
        "kaffi.cli",
        "kaffi.contrib",
        # It does I/O (it reads /proc): the protocol has none.
        "kaffi._procinfo",
    ),
    "kaffi.client": (
        "kaffi.app",
        "kaffi.worker",
        "kaffi.server",
        "kaffi.testing",
        "kaffi.periodic",
        "kaffi.cli",
        "kaffi.contrib",
    ),
    "kaffi.server": (
        "kaffi.app",
        "kaffi.worker",
        "kaffi.client",
        "kaffi.testing",
        "kaffi.periodic",
        "kaffi.cli",
        "kaffi.contrib",
    ),
    "kaffi.app": ("kaffi.worker", "kaffi.testing", "kaffi.periodic", "kaffi.cli", "kaffi.contrib"),
    "kaffi.worker": ("kaffi.testing", "kaffi.cli", "kaffi.contrib"),
    # Siblings: the testing modes and the worker never import each other.
    "kaffi.testing": ("kaffi.worker", "kaffi.periodic", "kaffi.cli", "kaffi.contrib"),
    "kaffi.periodic": (
        "kaffi.worker",
        "kaffi.testing",
        "kaffi.server",
        "kaffi.cli",
        "kaffi.contrib",
    ),
    # The schedules are what App.periodic imports: they must not import the App back.
    "kaffi.periodic.schedule": ("kaffi.app", "kaffi.client", "kaffi.periodic.runner"),
    "kaffi.contrib": ("kaffi.cli", *WORKER_INTERNALS),
    # `import kaffi` stays cheap and never loads an extra.
    "kaffi.__init__": ("kaffi.cli", "kaffi.contrib", "kaffi.server", "kaffi.testing"),
}

#: Modules that may import anything: the top of the graph.
TOP = ("kaffi.__main__", "kaffi.cli")

#: (module, import) pairs allowed despite FORBIDDEN, each for a documented reason.
ALLOWED = {
    # App(tracing=True) installs the tracing middleware: imported inside __init__, only
    # when asked for, so the extra stays unloaded otherwise.
    ("kaffi.app.app", "kaffi.contrib.otel"),
    # App.periodic builds a Schedule: imported inside the method (the one arrow back
    # from app), and the schedules import no App (see above).
    ("kaffi.app.app", "kaffi.periodic.schedule"),
    # Django's `manage.py kaffi_worker` is `kaffi worker`: it reuses that click command
    # (its parameters and callback) rather than a copy, and the KAFFI setting is checked
    # against the same parameters.
    ("kaffi.contrib.django.management.commands.kaffi_worker", "kaffi.cli.worker"),
    ("kaffi.contrib.django.conf", "kaffi.cli.worker"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` (module ``name``) imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # ``from kaffi import worker`` imports the module kaffi.worker too.
            found.update(
                f"{target}.{alias.name}"
                for alias in node.names
                if _is_module(f"{target}.{alias.name}")
            )
    return found


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = sorted(PACKAGE.rglob("*.py"))


def rules_of(name: str) -> list[tuple[str, ...]]:
    """The FORBIDDEN entries that apply to module ``name``."""
    key = "kaffi.__init__" if name == "kaffi" else name
    return [banned for prefix, banned in FORBIDDEN.items() if _within(key, prefix)]


def violations(path: Path, name: str | None = None) -> list[str]:
    """``name imports target`` for each import of a layer above it."""
    name = name or module_name(path)
    rules = rules_of(name)
    return sorted(
        f"{name} imports {target}"
        for target in imports_of(path, name)
        if (name, target) not in ALLOWED
        for banned in rules
        for prefix in banned
        if target == prefix.rstrip(".") or target.startswith(prefix.rstrip(".") + ".")
    )


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_imports_a_layer_above_it(path: Path) -> None:
    assert violations(path) == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_every_module_is_under_a_rule(path: Path) -> None:
    name = module_name(path)
    assert rules_of(name) or any(_within(name, top) for top in TOP), (
        f"{name} is under no rule of FORBIDDEN: say which layers it may import"
    )


def test_each_allowed_exception_is_still_needed() -> None:
    # An exception nobody uses any more would let the arrow back in unnoticed.
    for name, target in ALLOWED:
        path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
        assert target in imports_of(path, name), f"{name} no longer imports {target}"


def test_the_schedules_and_the_root_package_have_their_own_rules(tmp_path: Path) -> None:
    probe = tmp_path / "_layers_probe.py"
    probe.write_text(
        "from kaffi.app import App\nfrom kaffi.contrib.addresses import format_address\n"
    )
    assert violations(probe, "kaffi.periodic.schedule") == [
        "kaffi.periodic.schedule imports kaffi.app",
        "kaffi.periodic.schedule imports kaffi.contrib.addresses",
    ]
    assert violations(probe, "kaffi") == ["kaffi imports kaffi.contrib.addresses"]
    probe.write_text("from kaffi.cli.worker import worker\n")
    assert violations(probe, "kaffi.contrib.asgi") == [
        "kaffi.contrib.asgi imports kaffi.cli.worker"
    ]
    assert violations(probe, "kaffi.contrib.django.conf") == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_hides_a_standard_library_module(path: Path) -> None:
    # worker/joblog.py is not logging.py, contrib/addresses.py not http.py: a script run
    # from inside the folder would import ours instead, and a reader confuses the two.
    name = path.parent.name if path.name == "__init__.py" else path.stem
    assert name not in sys.stdlib_module_names, f"{module_name(path)} hides the stdlib's {name}"


def test_the_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    # Run the same parser on a module that breaks the rules in each way it can.
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from kaffi.worker import Worker\n"
        "def f():\n"
        "    import kaffi.testing.modes\n"
        "from kaffi import cli\n"
        "from ..worker.queues import parse_queues\n"
    )
    probe = tmp_path / "_layers_probe.py"
    probe.write_text(source)
    assert violations(probe, "kaffi.app._layers_probe") == [
        "kaffi.app._layers_probe imports kaffi.cli",
        "kaffi.app._layers_probe imports kaffi.testing.modes",
        "kaffi.app._layers_probe imports kaffi.worker",
        "kaffi.app._layers_probe imports kaffi.worker.queues",
    ]


def test_every_layer_but_cli_keeps_out_of_contrib(tmp_path: Path) -> None:
    probe = tmp_path / "_layers_probe.py"
    probe.write_text("def f():\n    from kaffi.contrib.prometheus import WorkerMetrics\n")
    for layer in ("protocol", "client", "server", "app", "worker", "testing", "periodic"):
        assert violations(probe, f"kaffi.{layer}._layers_probe") == [
            f"kaffi.{layer}._layers_probe imports kaffi.contrib.prometheus"
        ]
    assert violations(probe, "kaffi.cli._layers_probe") == []
    # The one allowed arrow back is that module and that import only.
    probe.write_text("from kaffi.contrib.otel import Tracing\n")
    assert violations(probe, "kaffi.app.app") == []
    assert violations(probe, "kaffi.app.task") == ["kaffi.app.task imports kaffi.contrib.otel"]


def test_contrib_sees_the_worker_through_its_public_surface(tmp_path: Path) -> None:
    probe = tmp_path / "_layers_probe.py"
    probe.write_text(
        "from kaffi.worker.events import WorkerEvents\n"
        "from kaffi.worker.joblog import job_log_fields\n"
        "from kaffi.worker.worker import Worker\n"
        "from kaffi.worker.processor import Processor\n"
    )
    assert violations(probe, "kaffi.contrib._layers_probe") == [
        "kaffi.contrib._layers_probe imports kaffi.worker.processor"
    ]


def test_app_worker_and_app_testing_still_work_without_the_imports() -> None:
    from kaffi.app import App
    from kaffi.testing.modes import Testing
    from kaffi.worker import Worker

    app = App()
    assert isinstance(app.worker(concurrency=2), Worker)
    assert isinstance(app.testing, Testing)
