"""Faktory Enterprise batches end to end: ``app.batch`` blocks, the clients and a real
worker against the embedded server with ``enterprise=True``, and the errors an
open-source server (and an unknown batch) give."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from kaffi import App, AsyncClient, Batch, Client, current_job
from kaffi.errors import BatchNotFound, EnterpriseRequired
from kaffi.protocol.batches import BatchStatus, CallbackState
from kaffi.server import EmbeddedServer
from tests.support import WAIT, running, wait_until

Record = tuple[str, Any, "str | None"]


@pytest.fixture
def ent_app(faktory_enterprise_server: Any) -> Iterator[App]:
    app = App(faktory_enterprise_server.url)
    yield app
    app.close()


def both_done(app: App, bid: str) -> bool:
    status = app.batch_status(bid)
    return status.complete is CallbackState.DONE and status.success is CallbackState.DONE


def queued_job(client: Client) -> dict[str, Any]:
    job = client.fetch()
    assert job is not None
    client.ack(job.jid)
    return job.to_wire()


# -- open-source mode and unknown batches ------------------------------------------------------


def test_oss_server_refuses_batches_with_enterprise_required(faktory_server: Any) -> None:
    app = App(faktory_server.url)

    @app.task
    def report() -> None:
        pass

    try:
        with (
            pytest.raises(EnterpriseRequired, match="BATCH NEW needs Faktory Enterprise"),
            app.batch(success=report.job()),
        ):
            pytest.fail("the block ran without a batch")
        with pytest.raises(EnterpriseRequired, match="batch subsystem"):
            app.batch_status("b-x")
        with pytest.raises(EnterpriseRequired, match="BATCH OPEN"), app.batch_open("b-x"):
            pytest.fail("the block ran without a batch")
        assert app.client.info().faktory.queues == {}  # nothing was pushed
    finally:
        app.close()


def test_an_unknown_batch_is_batch_not_found(ent_app: App) -> None:
    @ent_app.task
    def work() -> None:
        pass

    with pytest.raises(BatchNotFound) as caught:
        ent_app.batch_status("b-nope")
    assert caught.value.bid == "b-nope"
    with pytest.raises(BatchNotFound, match="to BATCH OPEN"), Batch.open("b-nope", ent_app):
        pytest.fail("the block ran without a batch")
    with pytest.raises(BatchNotFound, match="to BATCH COMMIT"):
        ent_app.client.batch_commit("b-nope")
    # A job naming an unknown batch is refused at PUSH.
    with pytest.raises(BatchNotFound, match="to PUSH"):
        work.options(custom={"bid": "b-nope"}).delay()
    with (
        pytest.raises(BatchNotFound, match="to BATCH NEW"),
        ent_app.batch(success=work.job(), parent="b-nope"),
    ):
        pytest.fail("the block ran without a batch")


# -- a batch run by a worker ------------------------------------------------------------------


def test_a_batch_runs_and_fires_both_callbacks_once(ent_app: App) -> None:
    ran: list[Record] = []
    lock = threading.Lock()

    def record(kind: str, value: Any, bid: str | None) -> None:
        with lock:
            ran.append((kind, value, bid))

    @ent_app.task
    def import_file(name: str) -> None:
        record("import", name, current_job().bid)

    @ent_app.task
    def report(outcome: str) -> None:
        assert current_job().bid is None  # callbacks are no members of the batch
        record(outcome, current_job().jid, current_job().callback_bid)

    files = ["a.csv", "b.csv", "c.csv", "d.csv", "e.csv"]
    success, complete = report.job("success"), report.job("complete")
    with ent_app.batch(description="nightly import", success=success, complete=complete) as batch:
        import_file.delay(files[0])
        import_file.apply_async((files[1],))
        import_file.delay_many([(files[2],)])
        ent_app.client.push(import_file.job(files[3]))
        ent_app.client.push({"jobtype": "import_file", "args": [files[4]], "jid": "f" * 24})
        inside = ent_app.batch_status(batch.bid or "")
    assert batch.bid is not None
    assert batch.committed
    assert (inside.total, inside.pending, inside.complete) == (5, 5, CallbackState.NOT_ENQUEUED)
    with running(ent_app.worker(concurrency=3)):
        wait_until(lambda: both_done(ent_app, batch.bid or ""), "both callbacks ACKed")
    status = ent_app.batch_status(batch.bid)
    assert isinstance(status, BatchStatus)
    assert (status.bid, status.description, status.parent_bid) == (
        batch.bid,
        "nightly import",
        None,
    )
    assert (status.total, status.pending, status.failed) == (5, 0, 0)
    assert status.created_at is not None
    assert sorted(name for kind, name, _ in ran if kind == "import") == files
    assert {bid for kind, _, bid in ran if kind == "import"} == {batch.bid}
    callbacks = [(kind, jid, bid) for kind, jid, bid in ran if kind != "import"]
    # complete first; success only once complete was ACKed (ENTERPRISE.md section 1).
    assert callbacks == [
        ("complete", complete.jid, batch.bid),
        ("success", success.jid, batch.bid),
    ]
    assert batch.status() == status


def test_a_failed_job_fires_complete_but_not_success(ent_app: App) -> None:
    @ent_app.task(retry=0)
    def fragile(n: int) -> None:
        if n == 2:
            raise ValueError("bad row")

    @ent_app.task
    def report(outcome: str) -> None:
        del outcome

    with ent_app.batch(success=report.job("ok"), complete=report.job("done")) as batch:
        fragile.delay_many([(1,), (2,)])
    assert batch.bid is not None
    with running(ent_app.worker(concurrency=1)):
        wait_until(
            lambda: ent_app.batch_status(batch.bid or "").complete is CallbackState.DONE,
            "the complete callback",
        )
    status = ent_app.batch_status(batch.bid)
    assert (status.total, status.pending, status.failed) == (2, 0, 1)
    assert status.success is CallbackState.NOT_ENQUEUED


def test_an_exception_in_the_block_leaves_the_batch_uncommitted(
    ent_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @ent_app.task
    def work(n: int) -> None:
        del n

    @ent_app.task
    def report() -> None:
        pytest.fail("a callback of an uncommitted batch ran")

    batch = ent_app.batch(success=report.job(), complete=report.job())

    def fill_then_fail() -> None:
        with batch:
            work.delay(1)
            raise KeyError("missing file")

    with pytest.raises(KeyError):
        fill_then_fail()
    assert batch.bid is not None
    assert not batch.committed
    assert f"batch {batch.bid} was left uncommitted" in caplog.text
    ent_app.worker(concurrency=1, burst=True).work()
    status = ent_app.batch_status(batch.bid)
    # The job ran, but nothing fires before a COMMIT.
    assert (status.total, status.pending) == (1, 0)
    assert (status.complete, status.success) == (CallbackState.NOT_ENQUEUED,) * 2
    assert ent_app.client.info().faktory.queues.get("default", 0) == 0
    # Committing it later (reopened by its bid) fires the callbacks as usual.
    with ent_app.batch_open(batch.bid):
        pass
    assert ent_app.batch_status(batch.bid).complete is CallbackState.ENQUEUED


def test_async_batch_from_asyncio_code(ent_app: App) -> None:
    @ent_app.task
    async def fetch_page(n: int) -> None:
        del n

    @ent_app.task
    async def summarize() -> None:
        pass

    async def main() -> tuple[Batch, BatchStatus]:
        try:
            async with ent_app.batch_async(description="crawl", complete=summarize.job()) as batch:
                await fetch_page.delay_async(1)
                # Tasks started in the block inherit the batch.
                await asyncio.gather(*(fetch_page.delay_async(n) for n in (2, 3)))
                await fetch_page.delay_many_async([(4,), (5,)])
            await fetch_page.delay_async(6)  # after the block: not in the batch
            assert batch.bid is not None
            return batch, await ent_app.batch_status_async(batch.bid)
        finally:
            await ent_app.aclose()

    batch, status = asyncio.run(main())
    assert batch.committed
    assert (status.description, status.total, status.pending) == ("crawl", 5, 5)
    client = ent_app.client
    jobs = [queued_job(client) for _ in range(6)]
    bids = sorted((job["args"][0], (job.get("custom") or {}).get("bid")) for job in jobs)
    assert bids == [(n, batch.bid) for n in range(1, 6)] + [(6, None)]


def test_async_client_runs_the_four_commands(faktory_enterprise_server: EmbeddedServer) -> None:
    async def main() -> BatchStatus:
        async with AsyncClient(faktory_enterprise_server.url) as client:
            bid = await client.batch_new(success=client.job("report"))
            assert await client.batch_open(bid) == bid
            job = client.job("work", 1)
            job.custom = {"bid": bid}
            await job.push()
            await client.batch_commit(bid)
            return await client.batch_status(bid)

    status = asyncio.run(main())
    assert (status.total, status.pending, status.success) == (1, 1, CallbackState.NOT_ENQUEUED)


# -- nesting, reopening, adding from a job ---------------------------------------------------


def test_nested_batches_fire_the_child_before_the_parent(ent_app: App) -> None:
    order: list[tuple[str, str | None, str | None]] = []

    @ent_app.task
    def work(n: int) -> None:
        del n

    @ent_app.task
    def done(which: str) -> None:
        order.append((which, current_job().callback_bid, current_job().parent_bid))

    with ent_app.batch(description="parent", success=done.job("parent")) as parent:
        work.delay(1)
        with ent_app.batch(description="child", parent=parent, success=done.job("child")) as child:
            work.delay(2)
            work.delay(3)
        work.delay(4)
    assert parent.bid is not None
    assert child.bid is not None
    child_status = ent_app.batch_status(child.bid)
    assert (child_status.parent_bid, child_status.total) == (parent.bid, 2)
    assert ent_app.batch_status(parent.bid).total == 2
    with running(ent_app.worker(concurrency=1)):
        wait_until(
            lambda: ent_app.batch_status(parent.bid or "").success is CallbackState.DONE,
            "the parent's success callback",
        )
    assert order == [("child", child.bid, parent.bid), ("parent", parent.bid, None)]


def test_a_job_adds_to_its_own_batch(ent_app: App) -> None:
    followed: list[tuple[int, str | None]] = []
    started = threading.Event()

    @ent_app.task
    def follow_up(n: int) -> None:
        followed.append((n, current_job().bid))

    @ent_app.task
    def long_job(n: int) -> None:
        current_job().batch.add(follow_up.job(n))
        with current_job().batch:
            follow_up.delay(n + 1)
        started.set()

    @ent_app.task
    async def async_job(n: int) -> None:
        await current_job().batch.add_async(follow_up.job(n))

    @ent_app.task
    def report() -> None:
        pass

    with ent_app.batch(success=report.job()) as batch:
        long_job.delay(10)
        async_job.delay(20)
    assert batch.bid is not None
    with running(ent_app.worker(concurrency=2)):
        assert started.wait(WAIT)
        wait_until(lambda: both_done_success(ent_app, batch.bid or ""), "the success callback")
    # The async job used app.async_client on the worker's loop: close its connections.
    asyncio.run(ent_app.aclose())
    assert sorted(followed) == [(10, batch.bid), (11, batch.bid), (20, batch.bid)]
    status = ent_app.batch_status(batch.bid)
    assert (status.total, status.pending, status.failed) == (5, 0, 0)


def both_done_success(app: App, bid: str) -> bool:
    return app.batch_status(bid).success is CallbackState.DONE


def test_batch_open_adds_to_an_existing_batch(ent_app: App) -> None:
    @ent_app.task
    def work(n: int) -> None:
        del n

    @ent_app.task
    def report() -> None:
        pass

    with ent_app.batch(complete=report.job()) as batch:
        work.delay(1)
    assert batch.bid is not None
    with Batch.open(batch.bid, ent_app) as reopened:
        assert reopened.bid == batch.bid
        work.delay(2)
    reopened.add(work.job(3))  # outside a block: OPEN, the push, COMMIT
    again = ent_app.batch_open(batch.bid)
    with again:
        again.add(work.job(4))  # inside: one push
    with batch:  # the first Batch, a second block: reopened as well
        work.delay(5)
    status = ent_app.batch_status(batch.bid)
    assert (status.total, status.pending) == (5, 5)
    jobs = [queued_job(ent_app.client) for _ in range(5)]
    assert {json.dumps((job.get("custom") or {}).get("bid")) for job in jobs} == {
        json.dumps(batch.bid)
    }
    with running(ent_app.worker(concurrency=1)):
        wait_until(
            lambda: ent_app.batch_status(batch.bid or "").complete is CallbackState.DONE,
            "the complete callback",
        )
