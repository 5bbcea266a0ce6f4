"""The App and tasks API against a Faktory server (the embedded one, or KAFFI_TEST_URL)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

import kaffi
from kaffi import App, Client
from kaffi.app.push import PushContext
from kaffi.errors import ConfigurationError, ConnectError, ValidationError
from kaffi.protocol.models import JobPayload
from tests.support import closed_port_url


@pytest.fixture
def app(faktory_server: Any) -> Iterator[App]:
    app = App(faktory_server.url)
    yield app
    app.close()


def fetch_all(app: App, client: Client, *queues: str) -> list[JobPayload]:
    """Every job waiting in ``queues``, ACKed (counted first: an empty FETCH waits 2 s)."""
    waiting = sum(queue_size(app, q) for q in queues or ("default",))
    jobs = []
    for _ in range(waiting):
        job = client.fetch(*queues)
        assert job is not None
        jobs.append(job)
        client.ack(job.jid)
    return jobs


def queue_size(app: App, queue: str) -> int:
    return app.client.info().faktory.queues.get(queue, 0)


def test_delay_pushes_a_job_any_worker_can_run(app: App, kaffi_client: Client) -> None:
    @app.task(queue="critical", custom={"team": "billing"})
    def charge(account: UUID, amount: Decimal, when: datetime) -> None:
        del account, amount, when

    account = UUID("12345678-1234-5678-1234-567812345678")
    jid = charge.delay(account, Decimal("9.99"), datetime(2030, 1, 1, tzinfo=timezone.utc))
    job = kaffi_client.fetch("critical")
    assert job is not None
    assert job.jid == jid
    assert job.jobtype == "charge"
    assert job.args == [str(account), "9.99", "2030-01-01T00:00:00Z"]
    assert job.custom == {"team": "billing"}
    assert job.retry == 25
    kaffi_client.ack(job.jid)
    # ...and in the worker the args become the annotated types again.
    assert charge.decode_args(job.args)[0] == [
        account,
        Decimal("9.99"),
        datetime(2030, 1, 1, tzinfo=timezone.utc),
    ]


def test_invalid_call_sends_nothing(app: App) -> None:
    @app.task
    def charge(amount: int) -> None:
        del amount

    with pytest.raises(ValidationError):
        charge.delay("many")  # type: ignore[arg-type]
    assert queue_size(app, "default") == 0


def test_delay_async(app: App, kaffi_client: Client) -> None:
    @app.task
    async def notify(user_id: int) -> None:
        del user_id

    async def main() -> str:
        try:
            return await notify.delay_async(7)
        finally:
            await app.aclose()

    jid = asyncio.run(main())
    [job] = fetch_all(app, kaffi_client)
    assert (job.jid, job.args) == (jid, [7])


def test_delay_many_pushes_in_chunks(app: App, kaffi_client: Client) -> None:
    @app.task(queue="bulk")
    def square(n: int) -> None:
        del n

    assert square.delay_many((i,) for i in range(1500)) == []
    assert queue_size(app, "bulk") == 1500
    jobs = fetch_all(app, kaffi_client, "bulk")
    assert sorted(job.args[0] for job in jobs) == list(range(1500))


def test_countdown_schedules_and_mutate_requeues(app: App, kaffi_client: Client) -> None:
    @app.task
    def later() -> None:
        return None

    jid = later.options(countdown=timedelta(hours=1)).delay()
    assert queue_size(app, "default") == 0
    assert app.client.info().faktory.sets.get("scheduled") == 1
    app.mutate.scheduled.with_jids(jid).requeue()
    job = kaffi_client.fetch("default")
    assert job is not None
    assert job.jid == jid
    kaffi_client.ack(jid)


def test_mutate_retries_and_dead(app: App, kaffi_client: Client) -> None:
    @app.task
    def flaky() -> None:
        return None

    first = flaky.delay()
    second = flaky.delay()
    for _ in (first, second):
        job = kaffi_client.fetch("default")
        assert job is not None
        kaffi_client.fail(job.jid, errtype="Boom", message="failed", backtrace=[])
    assert app.client.info().faktory.sets.get("retries") == 2
    app.mutate.retries.of_type("flaky").with_jids(first).kill()
    sets = app.client.info().faktory.sets
    assert (sets.get("retries"), sets.get("dead")) == (1, 1)
    app.mutate.dead.of_type("flaky").discard()
    app.mutate.retries.clear()
    sets = app.client.info().faktory.sets
    assert (sets.get("retries"), sets.get("dead")) == (0, 0)


def test_push_middleware_stamps_custom(app: App, kaffi_client: Client) -> None:
    def trace(ctx: PushContext, next: Callable[[], None]) -> None:
        ctx.job.custom = {**(ctx.job.custom or {}), "trace_id": "abc"}
        next()

    app.use_push(trace)

    @app.task
    def traced() -> None:
        return None

    traced.delay()
    [job] = fetch_all(app, kaffi_client)
    assert job.custom == {"trace_id": "abc"}


def test_job_builder(app: App, kaffi_client: Client) -> None:
    @app.task(queue="low", retry=2)
    def build(x: int) -> None:
        del x

    job = build.job(4)
    job.custom = {"via": "builder"}
    jid = job.push()
    [fetched] = fetch_all(app, kaffi_client, "low")
    assert (fetched.jid, fetched.args, fetched.retry) == (jid, [4], 2)
    assert fetched.custom == {"via": "builder"}


def test_app_client_options_and_settings(faktory_server: Any) -> None:
    app = App(faktory_server.url, pool_size=2, timeout=5.0)
    try:
        assert app.settings.port == faktory_server.port
        assert app.settings.timeout == 5.0
        assert app.client is app.client
        assert app.client.info().server.faktory_version
    finally:
        app.close()


def test_seed_connect_returns_a_connected_client(faktory_server: Any) -> None:
    client = kaffi.connect(faktory_server.url)
    try:
        assert isinstance(client, Client)
        assert client.info().faktory is not None
    finally:
        client.close()


def test_seed_connect_fails_clearly_when_unreachable() -> None:
    with pytest.raises(ConnectError):
        kaffi.connect(closed_port_url(), connect_timeout=2.0)


def test_worker_runs_what_delay_pushed(app: App) -> None:
    done = threading.Event()
    seen: list[Any] = []

    @app.task
    def handle(when: datetime) -> None:
        seen.append(when)
        done.set()

    handle.delay(datetime(2030, 1, 1, tzinfo=timezone.utc))
    worker = app.worker(concurrency=2, burst=True)
    worker.work()
    assert done.is_set()
    assert seen == [datetime(2030, 1, 1, tzinfo=timezone.utc)]


def test_unknown_client_option_is_refused_at_once() -> None:
    with pytest.raises(ConfigurationError, match="unknown client option 'pool_sise'"):
        App(pool_sise=3)


def test_settings_come_from_the_environment_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    app = App()
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    monkeypatch.setenv("FAKTORY_URL", "tcp://127.0.0.1:7777")
    assert (app.settings.host, app.settings.port) == ("127.0.0.1", 7777)


def test_delay_many_async(app: App, kaffi_client: Client) -> None:
    @app.task(queue="bulk")
    async def square(n: int) -> None:
        del n

    async def main() -> list[Any]:
        try:
            return list(await square.delay_many_async([(1,), {"n": 2}]))
        finally:
            await app.aclose()

    assert asyncio.run(main()) == []
    jobs = fetch_all(app, kaffi_client, "bulk")
    assert sorted(job.args[0] for job in jobs) == [1, 2]


def clients_built(app: App) -> tuple[bool, bool]:
    """Whether ``app.client`` and ``app.async_client`` exist yet (without building them)."""
    return app._client is not None, app._async_client is not None


def test_app_opens_nothing_until_a_client_is_used() -> None:
    # Nothing listens at this URL: declaring tasks and building the App must not notice.
    app = App(closed_port_url(), connect_timeout=2.0)

    @app.task
    def idle(x: int) -> None:
        del x

    assert clients_built(app) == (False, False)
    with pytest.raises(ConnectError):
        idle.delay(1)
    assert clients_built(app) == (True, False)  # built on first use...
    assert app.client is app.client  # ...and kept: one pool for the App
    assert isinstance(app.client, Client)
    assert app.async_client is app.async_client
    assert isinstance(app.async_client, kaffi.AsyncClient)
    app.close()
    assert clients_built(app) == (False, True)


def test_threads_racing_on_first_use_share_one_client(faktory_server: Any) -> None:
    app = App(faktory_server.url)
    start = threading.Barrier(8)
    seen: list[Client] = []
    lock = threading.Lock()

    def grab() -> None:
        start.wait(timeout=10)
        client = app.client
        with lock:
            seen.append(client)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    try:
        assert len(seen) == 8
        assert all(client is seen[0] for client in seen)
    finally:
        app.close()


def test_mutate_matching_kills_only_the_matching_retries(app: App, kaffi_client: Client) -> None:
    @app.task
    def sync_user(tag: str) -> None:
        del tag

    sync_user.delay("uid:12345")
    sync_user.delay("uid:99999")
    for _ in range(2):
        job = kaffi_client.fetch("default")
        assert job is not None
        kaffi_client.fail(job.jid, errtype="Boom", message="failed", backtrace=[])
    app.mutate.retries.matching("*uid:12345*").kill()
    sets = app.client.info().faktory.sets
    assert (sets.get("retries"), sets.get("dead")) == (1, 1)
    app.mutate.dead.with_jids("0" * 24).requeue()  # an unknown jid changes nothing
    assert app.client.info().faktory.sets.get("dead") == 1
    app.mutate.dead.of_type("sync_user").requeue()
    [job] = fetch_all(app, kaffi_client)
    assert job.args == ["uid:12345"]
