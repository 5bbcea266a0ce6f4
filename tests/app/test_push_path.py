"""What the app hands the client: a job checked and encoded once (EncodedJob), or the
middleware's JobPayload, never a dict the client would validate again; and delay_many as
one push_bulk call, so the client can pipeline its chunks."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from kaffi import App, Client
from kaffi.app.push import PushContext
from kaffi.errors import ValidationError
from kaffi.protocol.models import EncodedJob, JobPayload, RejectedJob


@pytest.fixture
def app(faktory_server: Any) -> Iterator[App]:
    app = App(faktory_server.url)
    yield app
    app.close()


def spy(app: App, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record what reaches ``app.client.push`` / ``push_bulk`` (then send it for real)."""
    seen: list[Any] = []
    client = app.client
    push, push_bulk = client.push, client.push_bulk

    def spy_push(job: Any) -> str:
        seen.append(job)
        return push(job)

    def spy_push_bulk(jobs: Iterable[Any]) -> list[RejectedJob]:
        seen.append(jobs)
        return push_bulk(jobs)

    monkeypatch.setattr(client, "push", spy_push)
    monkeypatch.setattr(client, "push_bulk", spy_push_bulk)
    return seen


def test_delay_hands_the_client_an_encoded_job(
    app: App, kaffi_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(queue="fast-path", custom={"k": "v"})
    def add(a: int, b: int = 2) -> None:
        del a, b

    seen = spy(app, monkeypatch)
    jid = add.delay(1, b=3)
    assert len(seen) == 1
    assert isinstance(seen[0], EncodedJob)
    assert seen[0].jid == jid
    job = kaffi_client.fetch("fast-path")
    assert job is not None
    assert (job.jid, job.jobtype, job.args, job.custom) == (jid, "add", [1, 3], {"k": "v"})
    kaffi_client.ack(jid)


def test_a_non_finite_custom_value_is_still_refused_at_delay(app: App) -> None:
    @app.task(custom={"x": float("nan")})
    def task() -> None:
        """Its custom option cannot become JSON."""

    with pytest.raises(ValidationError, match="NaN and infinite numbers are not JSON"):
        task.delay()


def test_push_middleware_job_goes_to_the_client_as_the_model(
    app: App, kaffi_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stamp(ctx: PushContext, call_next: Callable[[], None]) -> None:
        assert isinstance(ctx.job, JobPayload)
        ctx.job.custom = {"trace": "t-1"}
        call_next()

    app.use_push(stamp)

    @app.task(queue="fast-mw")
    def noop() -> None:
        """Pushed through the middleware."""

    seen = spy(app, monkeypatch)
    jid = noop.delay()
    assert jid is not None
    assert isinstance(seen[0], JobPayload)
    job = kaffi_client.fetch("fast-mw")
    assert job is not None
    assert (job.jid, job.custom) == (jid, {"trace": "t-1"})
    kaffi_client.ack(jid)


def test_delay_many_is_one_pipelined_push_bulk(
    app: App, kaffi_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task(queue="fast-bulk")
    def square(n: int) -> None:
        del n

    seen = spy(app, monkeypatch)
    assert square.delay_many((i,) for i in range(2500)) == []
    assert len(seen) == 1  # the client chunks it, two chunks in flight
    assert kaffi_client.info().faktory.queues["fast-bulk"] == 2500
    kaffi_client.queue_remove("fast-bulk")


def test_delay_many_to_the_server_stops_at_a_bad_item(app: App, kaffi_client: Client) -> None:
    @app.task(queue="fast-bad")
    def square(n: int) -> None:
        del n

    items: list[Any] = [(i,) for i in range(1500)]
    items[1200] = ("x",)
    message = r"delay_many item 1200: .*; jobs 0 to 999 were already pushed, nothing from"
    with pytest.raises(ValidationError, match=message):
        square.delay_many(items)
    assert kaffi_client.info().faktory.queues["fast-bad"] == 1000
    kaffi_client.queue_remove("fast-bad")


def test_delay_async_reaches_the_server(app: App, kaffi_client: Client) -> None:
    @app.task(queue="fast-async")
    async def job(x: int) -> None:
        del x

    async def main() -> list[str | None]:
        jids = [await job.delay_async(i) for i in range(3)]
        assert await job.delay_many_async([(7,), (8,)]) == []
        await app.aclose()
        return jids

    jids = asyncio.run(asyncio.wait_for(main(), 30))
    fetched = [kaffi_client.fetch("fast-async") for _ in range(5)]
    assert [j.jid for j in fetched[:3] if j is not None] == jids
    assert [j.args for j in fetched if j is not None] == [[0], [1], [2], [7], [8]]
    for j in fetched:
        assert j is not None
        kaffi_client.ack(j.jid)
