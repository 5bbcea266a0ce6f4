"""The ``kaffi`` command line (click).

One module per command family, each adding its commands to :data:`main`:

- ``kaffi/cli/server.py``: ``kaffi server`` (the embedded server);
- ``kaffi/cli/worker.py``: ``kaffi worker`` (run tasks);
- ``kaffi/cli/beat.py``: ``kaffi beat`` (push periodic jobs);
- ``kaffi/cli/ops.py``: ``kaffi info``, ``push``, ``queue``, ``mutate``, ``flush``;
- ``kaffi/cli/exporter.py``: ``kaffi exporter`` (Prometheus metrics of a server).

Commands import their heavy modules inside the command body, so ``kaffi --help`` stays
fast. Errors reach the user as one line (``kaffi: error: ...``) and a non-zero exit,
never as a traceback: see :func:`kaffi.cli.common.fail`.
"""

from __future__ import annotations

import importlib

import click

from kaffi._version import __version__

__all__ = ["main"]

#: Modules that add commands to ``main`` when imported.
_COMMAND_MODULES = (
    "kaffi.cli.server",
    "kaffi.cli.worker",
    "kaffi.cli.beat",
    "kaffi.cli.ops",
    "kaffi.cli.exporter",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(
    __version__, "--version", "-V", prog_name="kaffi", message="%(prog)s %(version)s"
)
def main() -> None:
    """kaffi: background jobs for Python on the Faktory work server."""


for _name in _COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as exc:  # a command family not written yet must not break the rest
        if exc.name != _name:
            raise
