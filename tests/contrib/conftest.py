"""Shared by the contrib tests: the test Django project, set up once per test session.

Django is configured once per process, so the project gets one embedded Faktory server
and one migrated SQLite file for the session (``django_project``); each test starts from
empty tables and an empty server. Tests that run ``manage.py`` in a subprocess copy the
migrated file into their own ``tmp_path`` and use the ``faktory_server`` fixture.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kaffi.server import EmbeddedServer

PROJECT = Path(__file__).resolve().parent / "djangoproject"


@dataclass
class DjangoProject:
    """The set-up test project: its folder, its migrated database, its Faktory server."""

    root: Path
    database: Path
    server: EmbeddedServer

    def queue_sizes(self) -> dict[str, int]:
        """Jobs waiting per queue on the project's server."""
        sizes: dict[str, int] = self.server.info()["faktory"]["queues"]
        return sizes

    def retries(self) -> int:
        """Jobs in the retries set (jobs that failed)."""
        count: int = self.server.info()["faktory"]["sets"]["retries"]
        return count


@pytest.fixture(scope="session")
def django_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DjangoProject]:
    """Django set up with the test project (DJANGO_SETTINGS_MODULE=djsite.settings)."""
    import django
    from django.core.management import call_command

    database = tmp_path_factory.mktemp("django") / "shop.sqlite3"
    with EmbeddedServer() as server:
        # Django is set up once per process, so these stay for the session.
        os.environ["SHOP_DB"] = str(database)
        os.environ["SHOP_FAKTORY_URL"] = server.url
        os.environ["DJANGO_SETTINGS_MODULE"] = "djsite.settings"
        sys.path.insert(0, str(PROJECT))
        with pytest.MonkeyPatch.context() as env:
            # Unset while the App is built (they would win over the project's KAFFI url);
            # the App keeps that url, so they may come back afterwards.
            env.delenv("FAKTORY_URL", raising=False)
            env.delenv("FAKTORY_PROVIDER", raising=False)
            django.setup()
        call_command("migrate", verbosity=0)
        yield DjangoProject(PROJECT, database, server)
        from django.db import connections

        connections.close_all()


@pytest.fixture
def project(
    django_project: DjangoProject, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DjangoProject]:
    """The project with empty tables and an empty server; FAKTORY_URL and
    FAKTORY_PROVIDER unset (they would win over the project's KAFFI url)."""
    from shop.models import Order, Receipt

    monkeypatch.delenv("FAKTORY_URL", raising=False)
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    Receipt.objects.all().delete()
    Order.objects.all().delete()
    django_project.server.flush()
    yield django_project
    django_project.server.flush()
