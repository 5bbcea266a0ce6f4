"""The ``KAFFI`` Django setting: read, checked, and turned into an App and worker defaults.

::

    KAFFI = {
        "url": "tcp://localhost:7419",      # the Faktory server
        "queues": ["critical", "default"],  # or "critical:3,default:1", or {"critical": 3, ...}
        "concurrency": 10,                  # and any other `kaffi worker` option, by its name
        "client": {"pool_size": 20},        # options of kaffi.App / kaffi.Client
        "autodiscover": True,               # import tasks.py of every installed app
        "testing": None,                    # "inline" or "fake": the App's testing mode
    }

The worker options are exactly the options of ``kaffi worker`` (their names with ``_``
for ``-``: ``beat_interval``, ``max_jobs_per_child`` ...), read from that command so the
two never drift apart; they become the defaults of ``manage.py kaffi_worker``, whose own
command-line options still win. The environment wins over ``url``, as for every kaffi
client: with ``FAKTORY_PROVIDER`` or ``FAKTORY_URL`` set, ``url`` is not used.

A misspelt key is a :class:`~kaffi.errors.ConfigurationError` naming it, raised when the
App is first built (in every process, web or worker). This module opens no connection.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from kaffi.errors import ConfigurationError

if TYPE_CHECKING:
    from kaffi.app import App

__all__ = ["INTEGRATION_KEYS", "build_app", "read_settings", "worker_defaults", "worker_options"]

#: Keys of ``KAFFI`` that are not worker options.
INTEGRATION_KEYS = frozenset({"url", "client", "autodiscover", "testing"})


def worker_options() -> frozenset[str]:
    """The worker option names ``KAFFI`` accepts: those of the ``kaffi worker`` command."""
    from kaffi.cli.worker import worker

    return frozenset(p.name for p in worker.params if p.name not in ("app", "url") and p.name)


def read_settings(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``config`` (default: ``settings.KAFFI``, or ``{}`` without one) as a checked dict."""
    if config is None:
        from django.conf import settings

        config = getattr(settings, "KAFFI", None) or {}
    if not isinstance(config, Mapping):
        raise ConfigurationError(
            f"the KAFFI setting must be a dict, got {type(config).__name__}: {config!r}"
        )
    allowed = INTEGRATION_KEYS | worker_options()
    unknown = sorted(str(key) for key in config if key not in allowed)
    if unknown:
        raise ConfigurationError(
            f"KAFFI setting has an unknown key {unknown[0]!r}; the keys are"
            f" {', '.join(sorted(allowed))}"
        )
    client = config.get("client") or {}
    if not isinstance(client, Mapping):
        raise ConfigurationError(
            f"KAFFI['client'] must be a dict of client options, got {client!r}"
        )
    testing = config.get("testing")
    if testing not in (None, "inline", "fake"):
        raise ConfigurationError(
            f"KAFFI['testing'] must be None, 'inline' or 'fake', got {testing!r}"
        )
    url = config.get("url")
    if url is not None and not isinstance(url, str):
        raise ConfigurationError(f"KAFFI['url'] must be a URL string, got {url!r}")
    return dict(config)


def _environment_names_server() -> bool:
    # The variables resolve_settings reads when no URL is given; they win over KAFFI["url"].
    return bool(os.environ.get("FAKTORY_PROVIDER") or os.environ.get("FAKTORY_URL"))


def build_app(config: Mapping[str, Any] | None = None) -> App:
    """A new App from ``config`` (default: ``settings.KAFFI``); the process-wide hooks
    are installed (see :func:`kaffi.contrib.django.db.install_hooks`)."""
    from kaffi.app import App
    from kaffi.contrib.django.db import install_hooks

    checked = read_settings(config)
    url = None if _environment_names_server() else checked.get("url")
    app = App(url, testing=checked.get("testing"), **dict(checked.get("client") or {}))
    install_hooks()
    return app


def _as_list_text(key: str, value: Any) -> str:
    """A queue or label list as the command line spells it (comma-separated)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return ",".join(f"{name}:{weight}" for name, weight in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    raise ConfigurationError(
        f"KAFFI[{key!r}] must be a list, a comma-separated string or (queues) a dict of"
        f" weights, got {value!r}"
    )


def worker_defaults(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The worker options of ``config`` as defaults for the ``kaffi worker`` options (a
    click ``default_map``): the command line checks and converts them as if typed."""
    checked = read_settings(config)
    defaults: dict[str, Any] = {}
    for key in worker_options():
        if key in checked and checked[key] is not None:
            value = checked[key]
            defaults[key] = _as_list_text(key, value) if key in ("queues", "labels") else value
    return defaults
