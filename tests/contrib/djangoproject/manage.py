"""The test Django project's manage.py, as ``django-admin startproject`` writes it."""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run a management command for the test project."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
