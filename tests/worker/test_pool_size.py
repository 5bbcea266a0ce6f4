"""``pool_size``: the most connections a worker holds, counted on the server too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kaffi.app import App
from kaffi.client.aio import AsyncConnection
from kaffi.errors import ReadError
from kaffi.worker import Worker
from tests.support import WAIT, running, wait_until


def connections_of(server: Any, wid: str) -> int:
    """How many connections the server counts for worker ``wid`` (0 when unknown)."""
    return sum(w["connections"] for w in server.workers() if w["wid"] == wid)


def test_a_worker_holds_its_slots_and_heartbeat_within_pool_size(
    app: App, faktory_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Connections break now and then, so slots reconnect and resend their reports.
    original = AsyncConnection.pipeline
    calls = [0]

    async def flaky(self: AsyncConnection, lines: Any, *, timeout: float | None = None) -> Any:
        calls[0] += 1
        if calls[0] % 7 == 0:
            self._abort()
            raise ReadError("connection reset by the test")
        return await original(self, lines, timeout=timeout)

    monkeypatch.setattr(AsyncConnection, "pipeline", flaky)

    @app.task
    def noop(n: int) -> None:
        return None

    noop.delay_many([(n,) for n in range(60)])
    worker = Worker(app, concurrency=3, pool_size=4)
    with running(worker):
        wait_until(lambda: worker.processed >= 60, "every job")
        # At rest: one connection per slot and one for the heartbeat, on both sides.
        budget = worker.connector.budget
        wait_until(
            lambda: budget.held == 4 and connections_of(faktory_server, worker.wid) == 4,
            "4 connections held and seen by the server",
        )
        assert budget.size == 4
        assert budget.peak == 4
    # Counted where the connections are made: the server notices a closed socket a little
    # after its replacement says HELLO, so its own count may lag during the churn.
    assert calls[0] > 7, "no connection was broken"
    assert worker.connector.budget.held == 0, "a connection outlived the worker"


def test_opening_past_pool_size_waits_until_a_connection_is_closed(
    app: App, faktory_server: Any
) -> None:
    worker = Worker(app, concurrency=1, pool_size=2)
    connector = worker.connector

    async def scenario() -> tuple[bool, int]:
        first = await connector.connect()
        second = await connector.connect()
        third = asyncio.ensure_future(connector.connect())
        done, _ = await asyncio.wait({third}, timeout=0.3)
        blocked = not done  # a bounded look: the third must not have opened
        held_on_server = connections_of(faktory_server, worker.wid)
        await connector.close(first)
        conn = await asyncio.wait_for(third, WAIT)
        await connector.close(second)
        await connector.close(conn)
        await connector.close(conn)  # closing twice gives back one permit, not two
        assert connector.budget.held == 0
        return blocked, held_on_server

    blocked, held_on_server = asyncio.run(scenario())
    assert blocked, "a third connection opened with pool_size=2"
    assert held_on_server == 2
    assert connector.budget.peak == 2


def test_the_default_pool_size_is_concurrency_plus_two() -> None:
    worker = Worker(App(), concurrency=5)
    assert worker.pool_size == 7
    assert worker.connector.pool_size == 7
