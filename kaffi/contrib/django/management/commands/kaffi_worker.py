"""``python manage.py kaffi_worker [options]``: kaffi's worker for a Django project.

The options are those of ``kaffi worker`` (the same click parameters and the same code
run them, see :mod:`kaffi.cli.worker`), with the ``KAFFI`` setting as their defaults;
the App is always the project's (:mod:`kaffi.contrib.django.boot`), so there is no APP
argument. Django's own options (``--settings``, ``--pythonpath``, ``--skip-checks``,
``--traceback``, ``--no-color``, ``--force-color``, ``-v``) are read by Django; everything
else goes to the worker unparsed, ``--help`` included. From code:
``call_command("kaffi_worker", "--", "--burst")``.
"""

from __future__ import annotations

import argparse
from typing import Any

import click
from django.core.management.base import BaseCommand, CommandError, CommandParser

__all__ = ["BOOT_APP", "Command", "worker_command"]

#: The App spec worker processes load (it sets Django up when imported).
BOOT_APP = "kaffi.contrib.django.boot:app"

HELP = """Run the kaffi worker for this project's tasks (those in each app's tasks.py).

The options are kaffi worker's; the KAFFI setting gives their defaults (env variables
FAKTORY_URL / FAKTORY_PROVIDER still win over KAFFI["url"], and these options over both).
Every worker process, --processes N children included, sets Django up first. Database
connections are checked around each job as Django does around each request.
"""

#: Django's options that take a value, and those that do not (what BaseCommand adds).
_DJANGO_VALUED = ("--settings", "--pythonpath", "--verbosity", "-v")
_DJANGO_FLAGS = ("--traceback", "--no-color", "--force-color", "--skip-checks")


def worker_command() -> click.Command:
    """``kaffi worker`` as a click command without its APP argument, always running the
    Django project's App: the same options, checks and code path."""
    from kaffi.cli.worker import worker

    callback = worker.callback
    assert callback is not None

    def run(**options: Any) -> Any:
        return callback(app=BOOT_APP, **options)

    return click.Command(
        "kaffi_worker",
        callback=run,
        params=[param for param in worker.params if param.name != "app"],
        help=HELP,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )


def split_argv(args: list[str]) -> tuple[list[str], list[str]]:
    """``(Django's options, the worker's)`` from the words after the command name."""
    django_part: list[str] = []
    worker_part: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        name = word.partition("=")[0]
        if name in _DJANGO_VALUED:
            django_part.append(word)
            if "=" not in word and index + 1 < len(args):
                index += 1
                django_part.append(args[index])
        elif word in _DJANGO_FLAGS or (word[:2] == "-v" and word[2:].isdigit()):
            django_part.append(word)
        else:
            worker_part.append(word)
        index += 1
    return django_part, worker_part


class Command(BaseCommand):
    """The ``kaffi_worker`` management command."""

    help = HELP

    def add_arguments(self, parser: CommandParser) -> None:
        """Collect the worker's options unparsed (after a ``--``)."""
        parser.add_argument(
            "worker_args",
            nargs=argparse.REMAINDER,
            help="kaffi worker options (see manage.py kaffi_worker --help)",
        )

    def run_from_argv(self, argv: list[str]) -> None:
        """Let Django read its own options and hand the rest to the worker after ``--``
        (argparse would otherwise refuse options it does not know)."""
        django_part, worker_part = split_argv(argv[2:])
        super().run_from_argv([*argv[:2], *django_part, "--", *worker_part])

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the worker command with the ``KAFFI`` setting as its defaults."""
        from kaffi.contrib.django.conf import worker_defaults

        words = list(options.get("worker_args") or [])
        if words[:1] == ["--"]:
            words = words[1:]
        command = worker_command()
        try:
            status = command.main(
                args=words,
                prog_name="manage.py kaffi_worker",
                default_map=worker_defaults(),
                standalone_mode=False,
            )
        except click.ClickException as exc:
            raise CommandError(exc.format_message(), returncode=exc.exit_code) from None
        # Without standalone mode click returns an exit status (--help: 0) instead of
        # exiting; the worker itself returns None or exits on its own.
        if isinstance(status, int) and status:
            raise SystemExit(status)
