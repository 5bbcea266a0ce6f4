"""The Enterprise features end to end: the App, the clients and a worker against the
embedded server, with ``enterprise=True`` (behaviour) and without (the errors an
open-source server gives)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from kaffi import App, AsyncClient, Client, current_job
from kaffi.errors import EnterpriseRequired, NotUnique
from kaffi.protocol.enterprise import Progress
from kaffi.server import EmbeddedServer
from tests.support import WAIT, embedded_server, running, wait_until


@pytest.fixture
def ent_app(faktory_enterprise_server: Any) -> Iterator[App]:
    app = App(faktory_enterprise_server.url)
    yield app
    app.close()


@pytest.fixture
def oss_app(faktory_server: Any) -> Iterator[App]:
    app = App(faktory_server.url)
    yield app
    app.close()


def info_sets(app: App) -> dict[str, Any]:
    sets: dict[str, Any] = app.client.info().raw["faktory"]["sets"]
    return sets


# -- open-source mode: errors ----------------------------------------------------------------


def test_oss_server_refuses_track_with_enterprise_required(oss_app: App) -> None:
    with pytest.raises(EnterpriseRequired, match="TRACK GET needs Faktory Enterprise"):
        oss_app.progress("a" * 24)
    with pytest.raises(EnterpriseRequired, match="TRACK SET"):
        oss_app.client.track_set("a" * 24, percent=5)
    with pytest.raises(EnterpriseRequired, match="batch subsystem"):
        oss_app.client.send("BATCH", "STATUS b-x")
    # The connection stays usable after each refusal.
    assert oss_app.client.info().raw["server"]["description"] == (
        "kaffi embedded Faktory-compatible server"
    )


def test_oss_server_refuses_progress_async(oss_app: App) -> None:
    async def main() -> None:
        with pytest.raises(EnterpriseRequired):
            await oss_app.progress_async("a" * 24)
        await oss_app.aclose()

    asyncio.run(main())


def test_oss_server_accepts_duplicates_and_delivers_expired_jobs(
    oss_app: App, faktory_server: Any
) -> None:
    @oss_app.task(unique_for=600, expires_in=1)
    def sync(n: int) -> None:
        del n

    first, second = sync.delay(1), sync.delay(1)
    assert first
    assert second
    assert first != second
    faktory_server.advance_clock(5)  # both are past their expires_at
    fetched = [oss_app.client.fetch(), oss_app.client.fetch()]
    assert [job.jid for job in fetched if job is not None] == [first, second]
    assert "total_expired" not in oss_app.client.info().raw["faktory"]


def test_track_in_a_job_on_oss_fails_the_job(oss_app: App) -> None:
    failures: list[BaseException] = []

    @oss_app.task
    def tracked() -> None:
        try:
            current_job().track(percent=10)
        except EnterpriseRequired as exc:
            failures.append(exc)
            raise

    tracked.delay()
    oss_app.worker(concurrency=1, burst=True).work()
    assert len(failures) == 1
    assert info_sets(oss_app)["retries"] == 1


# -- enterprise mode: unique jobs ------------------------------------------------------------


def test_duplicate_delay_raises_not_unique_until_the_job_succeeds(ent_app: App) -> None:
    @ent_app.task(unique_for=600)
    def sync_account(account_id: int) -> None:
        del account_id

    jid = sync_account.delay(7)
    with pytest.raises(NotUnique) as caught:
        sync_account.delay(7)
    assert caught.value.jobtype == "sync_account"
    assert caught.value.message == "Job not unique"
    assert caught.value.code == "NOTUNIQUE"
    assert sync_account.delay(8)  # other args
    assert sync_account.options(queue="other").delay(7)  # other queue
    assert sync_account.options(unique_for=None).delay(7)  # bypasses the lock
    job = sync_account.job(7)
    with pytest.raises(NotUnique):
        job.push()
    fetched = ent_app.client.fetch()
    assert fetched is not None
    assert fetched.jid == jid
    with pytest.raises(NotUnique):
        sync_account.delay(7)  # still locked while it runs
    ent_app.client.ack(jid)
    assert sync_account.delay(7)


def test_delay_many_reports_duplicates_per_job(ent_app: App) -> None:
    @ent_app.task(unique_for=60)
    def sync(n: int) -> None:
        del n

    sync.delay(1)
    outcome = sync.delay_many([(1,), (2,), (2,), (3,)])
    assert len(outcome) == 2
    assert all(r.not_unique for r in outcome)
    assert [r.payload["args"] for r in outcome] == [[1], [2]]
    assert ent_app.client.info().faktory.queues["default"] == 3


def test_unique_until_start_allows_a_copy_once_fetched(ent_app: App) -> None:
    @ent_app.task(unique_for=600, unique_until="start")
    def sync(n: int) -> None:
        del n

    sync.delay(1)
    with pytest.raises(NotUnique):
        sync.delay(1)
    assert ent_app.client.fetch() is not None
    assert sync.delay(1)


def test_lock_is_held_across_a_worker_crash_until_unique_for(
    ent_app: App, faktory_enterprise_server: EmbeddedServer
) -> None:
    @ent_app.task(unique_for=300, reserve_for=60)
    def sync(n: int) -> None:
        del n

    sync.delay(1)
    crashed = Client(faktory_enterprise_server.url, wid="crashing-worker")
    assert crashed.fetch() is not None
    crashed.close()  # gone without ACK or FAIL
    with pytest.raises(NotUnique):
        sync.delay(1)
    faktory_enterprise_server.advance_clock(61)  # the reservation expires: a retry
    wait_until(lambda: info_sets(ent_app)["retries"] == 1, "the reaped job in retries")
    with pytest.raises(NotUnique):
        sync.delay(1)
    faktory_enterprise_server.advance_clock(240)  # past unique_for
    assert sync.delay(1)


def test_async_client_raises_not_unique(faktory_enterprise_server: EmbeddedServer) -> None:
    async def main() -> None:
        async with AsyncClient(faktory_enterprise_server.url) as client:
            job = client.job("sync", 1)
            job.unique_for = 60
            await job.push()
            again = client.job("sync", 1)
            again.unique_for = 60
            with pytest.raises(NotUnique) as caught:
                await again.push()
            assert caught.value.jobtype == "sync"

    asyncio.run(main())


def test_delay_async_raises_not_unique(ent_app: App) -> None:
    @ent_app.task(unique_for=60)
    def sync(n: int) -> None:
        del n

    async def main() -> None:
        try:
            assert await sync.delay_async(1)
            with pytest.raises(NotUnique) as caught:
                await sync.delay_async(1)
            assert caught.value.jobtype == "sync"
            outcome = await sync.delay_many_async([(1,), (2,)])
            assert [r.payload["args"] for r in outcome if r.not_unique] == [[1]]
        finally:
            await ent_app.aclose()

    asyncio.run(main())


# -- enterprise mode: expiring jobs ----------------------------------------------------------


def test_expired_jobs_are_dropped_at_fetch(
    ent_app: App, faktory_enterprise_server: EmbeddedServer
) -> None:
    @ent_app.task(expires_in=timedelta(seconds=30))
    def report(n: int) -> None:
        del n

    report.delay(1)
    keep = report.options(expires_in=None).delay(2)
    faktory_enterprise_server.advance_clock(31)
    fetched = ent_app.client.fetch()
    assert fetched is not None
    assert fetched.jid == keep
    raw = ent_app.client.info().raw
    assert raw["faktory"]["total_expired"] == 1
    assert "Enterprise" in raw["server"]["description"]


def test_expiry_and_track_after_a_restart_with_data(tmp_path: Path) -> None:
    data = tmp_path / "ent.sqlite3"
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        expiring = client.job("report", 1)
        expiring.expires_in = 30
        expiring.push()
        tracked = client.job("report", 2)
        tracked.track = True
        tracked_jid = tracked.push()
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        # Expiry is read from the stored job; the progress record is stored too.
        assert client.track_get(tracked_jid).state == "enqueued"
        srv.advance_clock(31)
        fetched = client.fetch()
        assert fetched is not None
        assert fetched.jid == tracked_jid
        assert client.info().raw["faktory"]["total_expired"] == 1


# -- enterprise mode: tracking ---------------------------------------------------------------


def test_a_job_tracks_its_progress_and_app_reads_it(ent_app: App) -> None:
    seen: list[Progress] = []

    @ent_app.task(track=True)
    def long_job(n: int) -> None:
        current_job().track(percent=40, desc="parsing", reserve_until=timedelta(minutes=30))
        seen.append(ent_app.progress(current_job().jid))

    jid = long_job.delay(3)
    assert jid is not None
    before = ent_app.progress(jid)
    assert before.state == "enqueued"
    assert before.percent is None
    ent_app.worker(concurrency=1, burst=True).work()
    assert [(p.state, p.percent, p.desc) for p in seen] == [("working", 40, "parsing")]
    after = ent_app.progress(jid)
    assert (after.state, after.percent, after.desc) == ("success", 40, "parsing")
    assert after.updated_at is not None
    assert ent_app.progress("f" * 24).state == "unknown"


def test_async_job_tracks_with_track_async(ent_app: App) -> None:
    @ent_app.task(track=True)
    async def crunch() -> None:
        await current_job().track_async(percent=90, desc="almost")

    jid = crunch.delay()
    assert jid is not None
    ent_app.worker(concurrency=1, burst=True).work()

    async def read() -> Progress:
        try:
            return await ent_app.progress_async(jid)
        finally:
            await ent_app.aclose()

    progress = asyncio.run(read())
    assert (progress.state, progress.percent, progress.desc) == ("success", 90, "almost")


def test_reserve_until_keeps_a_long_job_past_its_reserve_for(
    ent_app: App, faktory_enterprise_server: EmbeddedServer
) -> None:
    tracked = threading.Event()
    release = threading.Event()

    @ent_app.task(track=True, reserve_for=60, retry=0)
    def slow() -> None:
        current_job().track(desc="long", reserve_until=timedelta(minutes=10))
        tracked.set()
        assert release.wait(WAIT), "the test never released the job"

    jid = slow.delay()
    assert jid is not None
    with running(ent_app.worker(concurrency=1)):
        assert tracked.wait(WAIT), "the job did not start"
        faktory_enterprise_server.advance_clock(120)  # twice its reserve_for
        assert info_sets(ent_app)["working"] == 1
        assert ent_app.progress(jid).state == "working"
        release.set()
        wait_until(lambda: ent_app.progress(jid).state == "success", "the job's ACK")
    assert info_sets(ent_app) == {"dead": 0, "retries": 0, "scheduled": 0, "working": 0}
    assert ent_app.client.info().faktory.tasks["Busy"].reaped == 0


def test_without_reserve_until_the_same_job_is_reaped(
    ent_app: App, faktory_enterprise_server: EmbeddedServer
) -> None:
    started = threading.Event()
    release = threading.Event()

    @ent_app.task(track=True, reserve_for=60, retry=0)
    def slow() -> None:
        started.set()
        assert release.wait(WAIT), "the test never released the job"

    slow.delay()
    with running(ent_app.worker(concurrency=1)):
        assert started.wait(WAIT), "the job did not start"
        faktory_enterprise_server.advance_clock(120)
        wait_until(lambda: info_sets(ent_app)["working"] == 0, "the reaper")
        release.set()
    assert ent_app.client.info().faktory.tasks["Busy"].reaped == 1
