"""The Django application config of :mod:`kaffi.contrib.django`.

``ready()`` installs the process-wide hooks (``delay_on_commit``, refused model
arguments), builds the project's App and imports ``tasks.py`` of every installed app
(unless ``KAFFI["autodiscover"]`` is False), so every process that sets Django up, web
or worker, knows every task.
"""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["KaffiConfig"]


class KaffiConfig(AppConfig):
    """``kaffi.contrib.django`` in ``INSTALLED_APPS``."""

    name = "kaffi.contrib.django"
    label = "kaffi"
    verbose_name = "kaffi"

    def ready(self) -> None:
        """Install the hooks, build the App, then discover the tasks."""
        from kaffi.contrib.django import get_app
        from kaffi.contrib.django.conf import read_settings
        from kaffi.contrib.django.db import install_hooks

        install_hooks()
        get_app()
        if read_settings().get("autodiscover", True):
            discover_tasks()


def discover_tasks() -> None:
    """Import the ``tasks`` module of every installed app that has one."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("tasks")
