"""kaffi.contrib.django with a real Django project (tests/contrib/djangoproject, SQLite).

In this process: the settings, the project App and task discovery, delay_on_commit on
commit and on rollback, model instances refused, and database connections closed under
a job. As subprocesses, the way a user runs them: ``manage.py kaffi_worker --burst``
running a job that reads and writes the database, once and with ``--processes 2``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction

import kaffi
from kaffi.app.task import set_on_commit_hook
from kaffi.client import Client
from kaffi.contrib.django import get_app
from kaffi.contrib.django.conf import build_app, worker_defaults
from kaffi.contrib.django.db import close_connections_async, close_connections_plain, install
from kaffi.contrib.django.management.commands.kaffi_worker import split_argv
from kaffi.errors import ConfigurationError, ValidationError
from tests.contrib.conftest import PROJECT, DjangoProject

# -- settings, the App, discovery ----------------------------------------------------------


def test_the_project_app_is_built_from_the_kaffi_setting(project: DjangoProject) -> None:
    from kaffi.contrib.django import app

    assert app is get_app()
    assert app.settings.url == project.server.url
    assert app.client_options == {"pool_size": 4}


def test_worker_processes_get_the_connection_middleware(project: DjangoProject) -> None:
    # What manage.py kaffi_worker loads in each worker process (Django is set up here).
    from kaffi.contrib.django.boot import app

    assert app is get_app()
    # First, around anything the project adds; installing again adds nothing.
    assert app.middleware[:2] == [close_connections_async, close_connections_plain]
    assert install(app).middleware.count(close_connections_plain) == 1


def test_the_testing_modes_run_plain_jobs_in_the_callers_transaction(
    project: DjangoProject,
) -> None:
    # A web or test process has no connection middleware: an inline job runs in this
    # thread, on this connection, inside this (uncommitted) transaction.
    from shop.models import Order
    from shop.tasks import confirm_order

    app = build_app({"testing": "inline"})
    app.register("confirm_order", confirm_order.fn)
    assert app.middleware == []
    with transaction.atomic():
        order = Order.objects.create(customer="gus", total=2)
        app.tasks["confirm_order"].delay(order.pk)
        order.refresh_from_db()
        assert order.status == "confirmed"
        transaction.set_rollback(True)
    assert Order.objects.count() == 0


def test_environment_wins_over_the_kaffi_url(
    project: DjangoProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"url": "tcp://127.0.0.1:1"}
    assert build_app(config).settings.url == "tcp://127.0.0.1:1"
    monkeypatch.setenv("FAKTORY_URL", project.server.url)
    assert build_app(config).settings.url == project.server.url


def test_a_misspelt_kaffi_key_is_refused_by_name(project: DjangoProject) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown key 'concurency'.*concurrency"):
        build_app({"concurency": 4})
    with pytest.raises(ConfigurationError, match="KAFFI\\['testing'\\]"):
        build_app({"testing": "sometimes"})
    with pytest.raises(ConfigurationError, match="must be a dict"):
        build_app(["url"])  # type: ignore[arg-type]


def test_worker_options_become_the_worker_commands_defaults(project: DjangoProject) -> None:
    defaults = worker_defaults(
        {
            "url": "tcp://x:1",
            "queues": ["critical", "default"],
            "labels": ("web", "eu"),
            "concurrency": 3,
            "beat_interval": 5,
            "burst": True,
            "client": {"pool_size": 2},
        }
    )
    assert defaults == {
        "queues": "critical,default",
        "labels": "web,eu",
        "concurrency": 3,
        "beat_interval": 5,
        "burst": True,
    }
    assert worker_defaults({"queues": {"critical": 3, "low": 1}}) == {"queues": "critical:3,low:1"}
    with pytest.raises(ConfigurationError, match="KAFFI\\['queues'\\] must be a list"):
        worker_defaults({"queues": 7})


def test_tasks_py_of_every_installed_app_is_discovered(project: DjangoProject) -> None:
    app = get_app()
    assert {"confirm_order", "drop_connection", "count_receipts"} <= set(app.tasks)
    assert app.tasks["confirm_order"].fn.__module__ == "shop.tasks"
    assert app.tasks["confirm_order"].queue == "shop"


def test_split_argv_leaves_djangos_options_to_django() -> None:
    django_part, worker_part = split_argv(
        [
            "--settings",
            "x.settings",
            "-c",
            "2",
            "--burst",
            "--pythonpath=/p",
            "--skip-checks",
            "-v2",
        ]
    )
    assert django_part == ["--settings", "x.settings", "--pythonpath=/p", "--skip-checks", "-v2"]
    assert worker_part == ["-c", "2", "--burst"]


def test_management_command_help_and_bad_options(
    project: DjangoProject, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("kaffi_worker", "--", "--help")
    out = capsys.readouterr().out
    assert "Usage: manage.py kaffi_worker [OPTIONS]" in out
    assert "--concurrency" in out
    assert "--processes" in out
    assert "APP" not in out.splitlines()[0]
    with pytest.raises(CommandError, match="No such option '--concurency'"):
        call_command("kaffi_worker", "--", "--concurency", "2")


# -- the admin page ----------------------------------------------------------------------------


def test_the_admin_page_shows_info_to_staff_only(
    project: DjangoProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.contrib.auth.models import User
    from django.test import Client as WebClient
    from shop.tasks import confirm_order

    import kaffi.contrib.django as integration

    confirm_order.delay(5)
    web = WebClient()
    assert web.get("/admin/kaffi/").status_code == 302  # to the admin's login
    user = User.objects.create_superuser("staff", "staff@example.com", "secret")
    try:
        web.force_login(user)
        page = web.get("/admin/kaffi/")
        assert page.status_code == 200
        html = page.content.decode()
        assert "<td>shop</td><td>1</td>" in html
        assert "<td>retries</td><td>0</td>" in html
        assert project.server.url in html
        # A server that cannot be reached is shown, not raised.
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            url = f"tcp://127.0.0.1:{closed.getsockname()[1]}"
            monkeypatch.setattr(integration, "_app", kaffi.App(url, connect_timeout=5))
            page = web.get("/admin/kaffi/")
        assert page.status_code == 200
        assert "Cannot read INFO" in page.content.decode()
    finally:
        user.delete()


def test_the_admin_page_reads_a_real_faktorys_info(project: DjangoProject) -> None:
    from kaffi.contrib.django.views import info_context

    # Faktory 1.10 counts workers under tasks.Workers.size.
    shown = info_context(
        {
            "faktory": {
                "queues": {"b": 2, "a": 1},
                "sets": {"dead": 3},
                "tasks": {"Workers": {"reaped": 0, "size": 4}},
                "total_processed": 9,
            },
            "server": {"faktory_version": "1.10.0", "connections": 6},
        }
    )
    assert shown["queues"] == [("a", 1), ("b", 2)]
    assert shown["sets"] == [("dead", 3)]
    assert ("processed", 9) in shown["totals"]
    assert ("workers", 4) in shown["server"]
    assert ("version", "1.10.0") in shown["server"]


# -- delay_on_commit -------------------------------------------------------------------------


def test_delay_on_commit_pushes_when_the_transaction_commits(project: DjangoProject) -> None:
    from shop.models import Order
    from shop.tasks import confirm_order

    with transaction.atomic():
        order = Order.objects.create(customer="ada", total=12)
        jid = confirm_order.delay_on_commit(order.pk)
        assert project.queue_sizes().get("shop", 0) == 0, "pushed before the commit"
    assert project.queue_sizes()["shop"] == 1
    with Client(project.server.url) as client:
        job = client.fetch("shop")
        assert job is not None
        assert job.jid == jid
        assert job.args == [order.pk]
        client.ack(job.jid)


def test_delay_on_commit_pushes_nothing_on_rollback(project: DjangoProject) -> None:
    from shop.models import Order
    from shop.tasks import confirm_order

    class Abort(Exception):
        pass

    def order_then_fail() -> None:
        with transaction.atomic():
            order = Order.objects.create(customer="bob", total=3)
            confirm_order.delay_on_commit(order.pk)
            raise Abort

    with pytest.raises(Abort):
        order_then_fail()
    with transaction.atomic():
        order = Order.objects.create(customer="cy", total=4)
        confirm_order.delay_on_commit(order.pk)
        transaction.set_rollback(True)
    assert Order.objects.count() == 0
    assert project.queue_sizes().get("shop", 0) == 0


def test_delay_on_commit_checks_arguments_at_the_call(project: DjangoProject) -> None:
    from shop.tasks import confirm_order

    with pytest.raises(ValidationError, match="order_id"), transaction.atomic():
        confirm_order.delay_on_commit("not a number")  # type: ignore[arg-type]
    assert project.queue_sizes().get("shop", 0) == 0


def test_delay_on_commit_without_a_hook_says_how_to_get_one() -> None:
    app = kaffi.App(testing="fake")

    @app.task
    def ping() -> None:
        """A task to push."""

    previous = set_on_commit_hook(None)
    try:
        with pytest.raises(ConfigurationError, match=r"kaffi.contrib.django"):
            ping.delay_on_commit()
    finally:
        set_on_commit_hook(previous)


# -- model instances refused ----------------------------------------------------------------


def test_a_model_instance_is_refused_with_advice_to_pass_the_primary_key(
    project: DjangoProject,
) -> None:
    from shop.models import Order
    from shop.tasks import confirm_order

    order = Order.objects.create(customer="dee", total=1)
    with pytest.raises(ValidationError, match="primary key") as info:
        confirm_order.delay(order)  # type: ignore[arg-type]
    assert "argument 'order_id'" in str(info.value)
    assert "shop.models.Order" in str(info.value)
    assert info.value.field == "order_id"

    app = get_app()

    @app.task(name="tag_anything")
    def tag_anything(item: Any, items: list[Any]) -> None:
        """Takes anything at all."""

    with pytest.raises(ValidationError, match=r"argument 'item' is a shop.models.Order"):
        tag_anything.delay(order, [])
    with pytest.raises(ValidationError, match=r"argument 'items'\[1\] is a shop.models.Order"):
        tag_anything.delay(1, [2, order])
    with pytest.raises(ValidationError, match="list of primary keys"):
        tag_anything.delay(Order.objects.all(), [])
    del app.tasks["tag_anything"]
    assert sum(project.queue_sizes().values()) == 0


def test_a_parameter_annotated_with_a_model_is_refused_at_declaration(
    project: DjangoProject,
) -> None:
    from shop.models import Order

    app = kaffi.App(testing="fake")
    with pytest.raises(ConfigurationError, match=r"parameter 'order'.*primary key"):

        @app.task
        def ship(order: Order) -> None:
            """Takes a row: refused."""

    with pytest.raises(ConfigurationError, match=r"parameter 'orders'.*shop.models.Order"):

        @app.task
        def ship_all(orders: list[Order] | None = None) -> None:
            """Takes rows: refused."""


# -- connections around each job ------------------------------------------------------------


def _run_burst_worker(app: kaffi.App) -> None:
    # The project's App as a worker process has it (boot installs the middleware).
    import kaffi.contrib.django.boot  # noqa: F401

    asyncio.run(app.worker(queues=["default"], concurrency=1, burst=True).run())


def _notes() -> list[str]:
    from shop.models import Receipt

    return list(Receipt.objects.order_by("pk").values_list("note", flat=True))


def test_a_job_after_the_database_closed_the_connection_still_works(
    project: DjangoProject,
) -> None:
    from shop.tasks import count_receipts, drop_connection

    drop_connection.delay("first")
    count_receipts.delay("second")
    _run_burst_worker(get_app())
    first, second = _notes()
    # One worker thread ran both, so the second job got the thread whose connection the
    # first one closed: the middleware replaced it.
    thread = first.rpartition(" in thread ")[2]
    assert second == f"second saw 1 in thread {thread}"
    assert project.retries() == 0


def test_without_the_middleware_the_same_jobs_fail(project: DjangoProject) -> None:
    # The control for the test above: an App without kaffi.contrib.django's middleware.
    from shop import tasks

    bare = kaffi.App(project.server.url)
    bare.register("drop_connection", tasks.drop_connection.fn)
    bare.register("count_receipts", tasks.count_receipts.fn)
    bare.tasks["drop_connection"].delay("first")
    bare.tasks["count_receipts"].delay("second")
    try:
        _run_burst_worker(bare)
    finally:
        bare.close()
    assert [note.partition(" in thread")[0] for note in _notes()] == ["first"]
    assert project.retries() == 1


def test_async_jobs_get_clean_connections_too(project: DjangoProject) -> None:
    from shop.tasks import count_receipts_async, drop_connection_async

    drop_connection_async.delay("first")
    count_receipts_async.delay("second")
    _run_burst_worker(get_app())
    assert _notes() == ["first", "second saw 1"]
    assert project.retries() == 0


def test_without_the_middleware_async_jobs_share_a_dropped_connection(
    project: DjangoProject,
) -> None:
    # The control for the async test: without the middleware every sync_to_async call of
    # every job runs in asgiref's one shared thread, so the second job meets the
    # connection the first one closed.
    from asgiref.sync import sync_to_async
    from django.db import connections
    from shop import tasks

    bare = kaffi.App(project.server.url)
    bare.register("drop_connection_async", tasks.drop_connection_async.fn)
    bare.register("count_receipts_async", tasks.count_receipts_async.fn)
    bare.tasks["drop_connection_async"].delay("first")
    bare.tasks["count_receipts_async"].delay("second")
    try:
        _run_burst_worker(bare)
    finally:
        bare.close()
        # Give the shared thread a working connection again, for the tests after this.
        asyncio.run(sync_to_async(connections.close_all)())
    assert _notes() == ["first"]
    assert project.retries() == 1


# -- manage.py kaffi_worker as a subprocess -------------------------------------------------


def _seed(database: Path, customers: list[str]) -> list[int]:
    """Orders inserted with plain sqlite3 into a copy of the migrated database."""
    with closing(sqlite3.connect(database)) as db, db:
        ids = []
        for customer in customers:
            cursor = db.execute(
                "INSERT INTO shop_order (customer, status, total) VALUES (?, 'new', ?)",
                (customer, len(customer)),
            )
            assert cursor.lastrowid is not None
            ids.append(cursor.lastrowid)
    return ids


def _manage(
    database: Path, url: str, *args: str, timeout: float = 50
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run manage.py as a user would; returns its outcome and its pid."""
    env = {k: v for k, v in os.environ.items() if k not in ("FAKTORY_URL", "FAKTORY_PROVIDER")}
    env.update(SHOP_DB=str(database), SHOP_FAKTORY_URL=url, PYTHONUNBUFFERED="1")
    env.pop("DJANGO_SETTINGS_MODULE", None)  # manage.py sets it, as for a user
    command = [sys.executable, str(PROJECT / "manage.py"), *args]
    with subprocess.Popen(
        command,
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"manage.py {' '.join(args)} hung\n{out}\n{err}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, err), process.pid


def _orders(database: Path) -> list[tuple[int, str, int | None]]:
    with closing(sqlite3.connect(database)) as db, db:
        rows = db.execute("SELECT id, status, confirmed_by FROM shop_order ORDER BY id")
        return [(row[0], row[1], row[2]) for row in rows]


def _receipts(database: Path) -> list[str]:
    with closing(sqlite3.connect(database)) as db, db:
        return [row[0] for row in db.execute("SELECT note FROM shop_receipt ORDER BY order_id")]


def _push_confirm(client: Client, order_id: int) -> None:
    # Pushed as any client in any language would; "shop" is only fetched because the
    # KAFFI setting lists it (kaffi worker's own default is "default").
    job = client.job("confirm_order", order_id)
    job.queue = "shop"
    job.push()


@pytest.fixture
def database(django_project: DjangoProject, tmp_path: Path) -> Path:
    """A copy of the migrated test database, for one subprocess test."""
    copy = tmp_path / "shop.sqlite3"
    shutil.copyfile(django_project.database, copy)
    with closing(sqlite3.connect(copy)) as db, db:
        db.execute("DELETE FROM shop_receipt")
        db.execute("DELETE FROM shop_order")
    return copy


@pytest.mark.slow
def test_manage_py_kaffi_worker_burst_runs_a_database_job(
    database: Path, faktory_server: Any, kaffi_client: Client
) -> None:
    (order_id,) = _seed(database, ["ada"])
    _push_confirm(kaffi_client, order_id)
    result, manage_pid = _manage(database, faktory_server.url, "kaffi_worker", "--burst")
    assert result.returncode == 0, result.stderr
    ((_, status, pid),) = _orders(database)
    assert status == "confirmed"
    assert pid == manage_pid  # one process: the command's own
    assert _receipts(database) == ["ada paid 3"]
    assert faktory_server.info()["faktory"]["sets"]["retries"] == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_manage_py_kaffi_worker_sets_django_up_in_every_process(
    database: Path, faktory_server: Any, kaffi_client: Client
) -> None:
    customers = ["ada", "bob", "cy", "dee", "eve", "fay"]
    ids = _seed(database, customers)
    for order_id in ids:
        _push_confirm(kaffi_client, order_id)
    result, supervisor_pid = _manage(
        database,
        faktory_server.url,
        "kaffi_worker",
        "--processes",
        "2",
        "--cpu-affinity",
        "off",
        "--burst",
        "--settings",
        "djsite.settings",
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    rows = _orders(database)
    assert [status for _, status, _ in rows] == ["confirmed"] * len(customers)
    # The jobs ran in the supervisor's children, each of which set Django up itself
    # (the ORM in the job would raise AppRegistryNotReady otherwise).
    pids = {pid for _, _, pid in rows}
    assert None not in pids
    assert supervisor_pid not in pids
    assert len(_receipts(database)) == len(customers)
