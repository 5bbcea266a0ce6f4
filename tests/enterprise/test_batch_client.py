"""Faktory Enterprise batches without a real server: the BATCH lines and replies
(sans-IO and through both clients against the scripted fake), which pushes join a batch,
and the App's batches in the testing modes."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

import kaffi
from kaffi import App, AsyncClient, Client, current_job
from kaffi.app.batch import Batch
from kaffi.errors import (
    BatchNotFound,
    ConfigurationError,
    JobError,
    RemoteProtocolError,
    ServerError,
    ValidationError,
)
from kaffi.protocol.batches import (
    BatchDefinition,
    BatchStatus,
    CallbackState,
    batch_new_document,
    current_bid,
    join_current,
)
from kaffi.protocol.commands import decode_batch_status, decode_bid, encode_batch, raise_for_error
from kaffi.protocol.models import JobPayload
from kaffi.protocol.resp import (
    BulkReply,
    ErrorReply,
    SimpleReply,
    encode_bulk,
    encode_error,
    encode_simple,
)
from kaffi.testing.modes import RecordedBatch
from tests.support import FakeFaktory

BID = "b-W5uwOl0DNxfZyg"


def callback(jobtype: str = "report", **fields: Any) -> JobPayload:
    return JobPayload.create(jid="c" * 24, jobtype=jobtype, args=["ok"], **fields)


# -- the wire, sans-IO -------------------------------------------------------------------------


def test_new_document_has_the_given_fields_and_callbacks_as_jobs() -> None:
    definition = BatchDefinition(
        description="nightly import", parent_bid=BID, success=callback(), complete=callback("x")
    )
    doc = batch_new_document(definition)
    assert doc["description"] == "nightly import"
    assert doc["parent_bid"] == BID
    assert doc["success"]["jobtype"] == "report"
    assert doc["success"]["jid"] == "c" * 24
    assert doc["success"]["args"] == ["ok"]
    assert doc["complete"]["jobtype"] == "x"
    assert batch_new_document(BatchDefinition(complete=callback())).keys() == {"complete"}
    line = encode_batch("NEW", doc)
    assert line.startswith(b'BATCH NEW {"description":"nightly import","parent_bid":"b-W5')
    assert line.endswith(b"}\r\n")


def test_new_document_refuses_a_batch_without_callback_or_with_a_bad_parent() -> None:
    with pytest.raises(ValidationError, match="needs a success or a complete callback"):
        batch_new_document(BatchDefinition(description="no callback"))
    with pytest.raises(ValidationError, match="parent_bid must be a batch id"):
        batch_new_document(BatchDefinition(parent_bid="two words", success=callback()))


def test_a_callback_never_carries_the_bid_of_the_block_it_was_built_in() -> None:
    inside = callback(custom={"bid": BID, "trace": "t1"})
    only_bid = callback(custom={"bid": BID})
    doc = batch_new_document(BatchDefinition(success=inside, complete=only_bid))
    assert doc["success"]["custom"] == {"trace": "t1"}
    assert "custom" not in doc["complete"]


def test_status_is_typed_with_readable_callback_states() -> None:
    status = decode_batch_status(
        BulkReply(
            json.dumps(
                {
                    "bid": BID,
                    "parent_bid": "b-parent",
                    "description": "nightly",
                    "created_at": "2026-12-06T05:38:22.274002Z",
                    "total": 5,
                    "pending": 2,
                    "failed": 1,
                    "complete_st": "1",
                    "success_st": "",
                }
            ).encode()
        )
    )
    assert (status.bid, status.parent_bid, status.description) == (BID, "b-parent", "nightly")
    assert status.created_at == datetime(2026, 12, 6, 5, 38, 22, 274002, tzinfo=timezone.utc)
    assert (status.total, status.pending, status.failed) == (5, 2, 1)
    assert status.complete is CallbackState.ENQUEUED
    assert status.success is CallbackState.NOT_ENQUEUED
    assert str(status.complete) == "enqueued"
    assert f"{status.success}|{status.complete:>9}" == "not enqueued| enqueued"
    assert str(status) == (
        f"batch {BID}: 5 jobs, 2 pending, 1 failed; complete callback enqueued,"
        " success callback not enqueued"
    )
    # One job is "1 job", as `print(app.batch_status(bid))` shows it.
    one = status.model_copy(update={"total": 1, "pending": 1, "failed": 0})
    assert str(one).startswith(f"batch {BID}: 1 job, 1 pending, 0 failed;")


def test_status_parsing_is_lenient_about_missing_and_empty_fields() -> None:
    status = BatchStatus.model_validate(
        {"bid": BID, "parent_bid": "", "created_at": "", "success_st": 2, "extra": [1]}
    )
    assert status.parent_bid is None
    assert status.created_at is None
    assert status.description is None
    assert (status.total, status.pending, status.failed) == (0, 0, 0)
    assert status.complete is CallbackState.NOT_ENQUEUED
    assert status.success is CallbackState.DONE
    assert status.model_extra == {"extra": [1]}


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (BulkReply(b'{"bid":"b-1","complete_st":"7"}'), "callback state"),
        (BulkReply(b"[1]"), "expected a JSON object"),
        (BulkReply(b'{"bid":"b-1","created_at":"yesterday"}'), "unexpected BATCH STATUS"),
        (SimpleReply("OK"), "expected a bulk reply"),
    ],
)
def test_a_status_reply_of_the_wrong_shape_is_the_peers_protocol_error(
    reply: Any, match: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_batch_status(reply)


def test_bid_replies() -> None:
    assert decode_bid(BulkReply(BID.encode()), "BATCH NEW") == BID
    assert decode_bid(SimpleReply(BID), "BATCH NEW") == BID
    for bad in (BulkReply(None), BulkReply(b""), BulkReply(b"two words")):
        with pytest.raises(RemoteProtocolError, match="expected a batch id to BATCH NEW"):
            decode_bid(bad, "BATCH NEW")


@pytest.mark.parametrize("text", [f"no such batch {BID}", f"No such batch {BID}"])
def test_no_such_batch_is_batch_not_found_carrying_the_bid(text: str) -> None:
    with pytest.raises(BatchNotFound) as caught:
        raise_for_error(ErrorReply("ERR", text), "BATCH OPEN")
    assert isinstance(caught.value, ServerError)
    assert caught.value.bid == BID
    assert caught.value.message == text
    assert str(caught.value) == (
        f"batch '{BID}' does not exist on the server (to BATCH OPEN): it was never created"
        f" or it expired (the server said '-ERR {text}')"
    )
    assert kaffi.BatchNotFound is BatchNotFound


def test_join_current_keeps_a_batch_the_job_names_itself() -> None:
    payload: dict[str, Any] = {"jid": "j" * 24, "jobtype": "x", "custom": {"a": 1}}
    assert join_current(payload) is payload  # no block open
    token = current_bid.set(BID)
    try:
        joined = join_current(payload)
        assert joined["custom"] == {"a": 1, "bid": BID}
        assert payload["custom"] == {"a": 1}  # the caller's dict is left alone
        own = {"jid": "j" * 24, "jobtype": "x", "custom": {"bid": "b-other"}}
        assert join_current(own) is own
    finally:
        current_bid.reset(token)


# -- both clients, against the scripted fake ---------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeFaktory]:
    with FakeFaktory() as server:
        yield server


def test_client_sends_the_four_batch_commands(fake: FakeFaktory) -> None:
    doc = b'{"bid":"%b","total":1,"pending":1,"failed":0,"complete_st":"","success_st":""}'
    fake.script("BATCH", encode_bulk(BID), encode_simple("OK"), encode_simple("OK"))
    fake.script("BATCH", encode_bulk(doc % BID.encode()))
    with Client(fake.url) as client:
        bid = client.batch_new(description="d", success=client.job("report", "ok"))
        assert bid == BID
        # Ruby's reopen expects +OK; Go and Rust the bid: either is an open batch.
        assert client.batch_open(bid) == BID
        client.batch_commit(bid)
        status = client.batch_status(bid)
    assert status.total == 1
    lines = fake.commands("BATCH")
    new = json.loads(lines[0].removeprefix("BATCH NEW "))
    assert new["description"] == "d"
    assert new["success"]["jobtype"] == "report"
    assert new["success"]["args"] == ["ok"]
    assert lines[1:] == [f"BATCH OPEN {BID}", f"BATCH COMMIT {BID}", f"BATCH STATUS {BID}"]


def test_async_client_sends_the_same_and_raises_batch_not_found(fake: FakeFaktory) -> None:
    fake.script("BATCH", encode_bulk(BID), encode_error("no such batch b-gone"))

    async def main() -> None:
        async with AsyncClient(fake.url) as client:
            definition = BatchDefinition(complete=callback())
            assert await client.batch_new(definition) == BID
            with pytest.raises(BatchNotFound) as caught:
                await client.batch_commit("b-gone")
            assert caught.value.bid == "b-gone"

    asyncio.run(main())
    assert fake.commands("BATCH")[1] == "BATCH COMMIT b-gone"


def test_client_checks_batch_arguments_before_sending(fake: FakeFaktory) -> None:
    with Client(fake.url) as client:
        with pytest.raises(ValidationError, match="needs a success or a complete"):
            client.batch_new(description="nothing to call")
        with pytest.raises(ValidationError, match="not both"):
            client.batch_new(BatchDefinition(success=callback()), description="twice")
        with pytest.raises(ValidationError, match="bid must be a batch id"):
            client.batch_status("")
        with pytest.raises(ValidationError, match="batch success callback: invalid job"):
            client.batch_new(success={"jobtype": ""})
        with pytest.raises(ValidationError, match="description must be a string"):
            client.batch_new(description=3, success=callback())  # type: ignore[arg-type]
    assert fake.commands("BATCH") == []


def test_client_pushes_inside_a_block_join_its_batch(fake: FakeFaktory) -> None:
    token = current_bid.set(BID)
    try:
        with Client(fake.url) as client:
            client.push({"jobtype": "a", "jid": "1" * 24})
            client.job("b", 1).push()
            client.push({"jobtype": "c", "jid": "3" * 24, "custom": {"bid": "b-own"}})
            client.push_bulk([{"jobtype": "d", "jid": "4" * 24}, client.job("e")])
    finally:
        current_bid.reset(token)
    pushed = [json.loads(line.removeprefix("PUSH ")) for line in fake.commands("PUSH")]
    assert [job["custom"]["bid"] for job in pushed] == [BID, BID, "b-own"]
    (bulk_line,) = fake.commands("PUSHB")
    bulk = json.loads(bulk_line.removeprefix("PUSHB "))
    assert [job["custom"]["bid"] for job in bulk] == [BID, BID]


# -- the App in the testing modes --------------------------------------------------------------


@pytest.fixture
def app() -> App:
    return App("tcp://127.0.0.1:1")  # never reached: every test runs in a testing mode


def test_fake_mode_records_batches_and_their_jobs_carry_the_bid(app: App) -> None:
    @app.task
    def work(n: int) -> None:
        del n

    @app.task
    def report(msg: str) -> None:
        del msg

    with app.testing.fake() as jobs:
        with app.batch(description="nightly", success=report.job("ok")) as outer:
            assert outer.is_open
            work.delay(1)
            work.apply_async((2,))
            work.delay_many([(3,), (4,)])
            with app.batch(parent=outer, complete=report.job("child")) as inner:
                work.delay(5)
            work.delay(6)
        work.delay(7)
        assert outer.bid is not None
        assert inner.bid is not None
        assert outer.bid.startswith("b-")
        assert len(outer.bid) == 16
        bids = [(job.args[0], (job.custom or {}).get("bid")) for job in jobs]
        assert bids == [
            (1, outer.bid),
            (2, outer.bid),
            (3, outer.bid),
            (4, outer.bid),
            (5, inner.bid),
            (6, outer.bid),
            (7, None),
        ]
        record = app.testing.batches[outer.bid]
        assert isinstance(record, RecordedBatch)
        assert (record.opened, record.committed) == (1, 1)
        assert record.definition is not None
        assert record.definition.description == "nightly"
        assert record.definition.success is not None
        assert record.definition.success.jobtype == "report"
        child = app.testing.batches[inner.bid].definition
        assert child is not None
        assert child.parent_bid == outer.bid
        with pytest.raises(ConfigurationError, match=r"app\.testing\.batches"):
            app.batch_status(outer.bid)
    assert current_bid.get() is None
    assert repr(outer) == f"<Batch {outer.bid} committed>"


def test_an_exception_in_the_block_leaves_the_batch_uncommitted_and_says_so(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    def work(n: int) -> None:
        del n

    with app.testing.fake() as jobs:
        batch = app.batch(success=work.job(0))

        def fill_then_fail() -> None:
            with batch:
                work.delay(1)
                raise RuntimeError("disk full")

        with (
            caplog.at_level(logging.WARNING, "kaffi.batch"),
            pytest.raises(RuntimeError, match="disk full") as caught,
        ):
            fill_then_fail()
        assert batch.bid is not None
        assert app.testing.batches[batch.bid].committed == 0
        assert not batch.committed
        assert current_bid.get() is None
        assert [(job.custom or {}).get("bid") for job in jobs] == [batch.bid]
    assert f"batch {batch.bid} was left uncommitted" in caplog.text
    assert "RuntimeError: disk full" in caplog.text
    if sys.version_info >= (3, 11):
        notes = caught.value.__notes__
        assert notes == [
            f"kaffi: batch {batch.bid} was left uncommitted because the block raised; its"
            " callbacks will not fire unless it is opened and committed again (Faktory"
            " drops an uncommitted batch after 30 minutes)"
        ]
    assert repr(batch) == f"<Batch {batch.bid} not committed>"


def test_inline_jobs_see_their_batch_and_add_to_it(app: App) -> None:
    seen: list[tuple[str, int, str | None]] = []

    @app.task
    def follow_up(n: int) -> None:
        seen.append(("follow_up", n, current_job().bid))

    @app.task
    def unrelated(n: int) -> None:
        seen.append(("unrelated", n, current_job().bid))

    @app.task
    def work(n: int) -> None:
        seen.append(("work", n, current_job().bid))
        assert current_job().batch is current_job().batch
        current_job().batch.add(follow_up.job(n * 10))
        unrelated.delay(n)  # a plain push from a job joins no batch, as on a worker

    @app.task
    def outside() -> None:
        with pytest.raises(JobError, match="is not part of a batch"):
            current_job().batch  # noqa: B018
        seen.append(("outside", 0, current_job().callback_bid))

    with app.testing.inline():
        with app.batch(complete=outside.job()) as batch:
            work.delay(1)
        outside.delay()
    assert seen == [
        ("work", 1, batch.bid),
        ("follow_up", 10, batch.bid),
        ("unrelated", 1, None),
        ("outside", 0, None),
    ]
    assert batch.bid is not None
    record = app.testing.batches[batch.bid]
    # The block, then the job's add(): opened and committed twice.
    assert (record.opened, record.committed) == (2, 2)


def test_asyncio_code_and_tasks_started_in_the_block_join_it(app: App) -> None:
    @app.task
    async def work(n: int) -> None:
        del n

    async def main() -> tuple[Batch, list[JobPayload]]:
        with app.testing.fake() as jobs:
            async with app.batch_async(success=work.job(0)) as batch:
                await work.delay_async(1)
                await asyncio.gather(work.delay_async(2), work.delay_async(3))
                await work.delay_many_async([(4,)])
            await work.delay_async(5)
            return batch, list(jobs)

    batch, jobs = asyncio.run(main())
    assert [((job.custom or {}).get("bid"), job.args[0]) for job in jobs] == [
        (batch.bid, 1),
        (batch.bid, 2),
        (batch.bid, 3),
        (batch.bid, 4),
        (None, 5),
    ]
    assert batch.committed


def test_push_middleware_see_the_bid(app: App) -> None:
    seen: list[Any] = []

    def spy(ctx: Any, next: Any) -> Any:
        seen.append((ctx.job.custom or {}).get("bid"))
        return next()

    app.use_push(spy)

    @app.task
    def work() -> None:
        pass

    with app.testing.fake(), app.batch(success=work.job()) as batch:
        work.delay()
    assert seen == [batch.bid]


def test_batch_arguments_are_checked_where_the_batch_is_made(app: App) -> None:
    @app.task
    def work() -> None:
        pass

    with pytest.raises(ValidationError, match="needs a success or a complete callback"):
        app.batch(description="no callback")
    with pytest.raises(ConfigurationError, match="opened by its bid alone"):
        Batch(app, bid=BID, description="x")
    with pytest.raises(ConfigurationError, match="does not exist yet"):
        app.batch(success=work.job(), parent=app.batch(success=work.job()))
    with pytest.raises(ValidationError, match="parent must be a batch id"):
        app.batch(success=work.job(), parent="")
    with pytest.raises(ConfigurationError, match="enter its block first"):
        app.batch(success=work.job()).add(work.job())
    # The task itself instead of a job of it: the error says how to make the job.
    with pytest.raises(ValidationError, match=r"got Task \(a task: build its job with work\.job"):
        app.batch(success=work)  # type: ignore[arg-type]
    opened = Batch.open(BID, app)
    assert (opened.bid, opened.definition) == (BID, None)
    assert app.batch_open(BID).bid == BID
    assert kaffi.Batch is Batch
