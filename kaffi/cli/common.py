"""Helpers every ``kaffi`` command shares: the ``--url`` option and one-line errors.

- :func:`log_options` adds ``--log-level`` and ``--log-format`` to a command that runs
  for a while (``kaffi worker``, ``kaffi beat``).
- :func:`url_option` adds ``--url`` to a command. Left out, the URL is found the way
  every kaffi client finds it (:func:`kaffi.client.resolve_settings`): the variable named
  by ``FAKTORY_PROVIDER``, else ``FAKTORY_URL``, else ``tcp://localhost:7419``.
- :func:`fail` prints ``kaffi: error: <message>`` on stderr and exits with status 1.
- :func:`handle_errors` turns any :class:`~kaffi.errors.KaffiError` raised inside it into
  :func:`fail`, so a user sees one clear line instead of a traceback. It works as a
  ``with`` block and as a decorator.

This module must stay light: it is imported by every command module, and ``kaffi --help``
should not pay for the client, pydantic or asyncio.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from kaffi.errors import KaffiError

if TYPE_CHECKING:
    from kaffi.client.config import ConnectionSettings

__all__ = [
    "URL_HELP",
    "EXIT_FAILURE",
    "url_option",
    "log_options",
    "fail",
    "handle_errors",
    "connection_settings",
    "one_line",
]

#: Exit status of a command that failed (click itself uses 2 for bad usage).
EXIT_FAILURE = 1

URL_HELP = (
    "Faktory server URL, like tcp://:PASSWORD@host:7419 (tcp+tls:// for TLS). "
    "Default: the variable named by FAKTORY_PROVIDER, else FAKTORY_URL, "
    "else tcp://localhost:7419."
)

_F = TypeVar("_F", bound=Callable[..., object])


def url_option(command: _F) -> _F:
    """Add ``--url URL`` to a click command; the value reaches it as ``url`` (None if absent).

    The value is passed on unchanged: resolve it with :func:`connection_settings`, which
    applies the FAKTORY_PROVIDER / FAKTORY_URL / localhost fallbacks.
    """
    return click.option("--url", "url", default=None, metavar="URL", help=URL_HELP)(command)


def setting(
    *names: str, type: Any, default: object, help: str, metavar: str | None = None
) -> Callable[[_F], _F]:
    """A click option holding a checked value (a number range, a choice) with its default
    shown in ``--help`` (when it has one), written on one line where a command lists many."""
    return click.option(
        *names,
        type=type,
        default=default,
        show_default=default is not None,
        metavar=metavar,
        help=help,
    )


LOG_LEVEL_HELP = "debug, info, warning, error or critical."
LOG_FORMAT_HELP = "text for people, json (one object per line) for machines."


def log_options(command: _F) -> _F:
    """Add ``--log-level LEVEL`` (default info) and ``--log-format text|json`` to a
    command; they reach it as ``log_level`` and ``log_format``."""
    command = setting(
        "--log-format", type=click.Choice(["text", "json"]), default="text", help=LOG_FORMAT_HELP
    )(command)
    return click.option(
        "--log-level", default="info", show_default=True, metavar="LEVEL", help=LOG_LEVEL_HELP
    )(command)


def one_line(message: str) -> str:
    """Collapse a message onto one line, so every error is exactly one line of output."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def fail(message: str) -> NoReturn:
    """Print ``kaffi: error: <message>`` on stderr and exit with status 1."""
    click.echo(f"kaffi: error: {one_line(message)}", err=True)
    raise SystemExit(EXIT_FAILURE)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Report a :class:`~kaffi.errors.KaffiError` as one line and exit non-zero.

    Use it as ``with handle_errors(): ...`` or as ``@handle_errors()`` on a function.
    Anything that is not a kaffi error (a bug) is left alone, so its traceback still shows.
    """
    try:
        yield
    except KaffiError as exc:
        fail(str(exc) or type(exc).__name__)


def connection_settings(url: str | None) -> ConnectionSettings:
    """Resolve ``--url`` (or its absence) to connection settings, or fail with one line."""
    from kaffi.client.config import resolve_settings

    try:
        return resolve_settings(url)
    except KaffiError as exc:
        fail(str(exc))
