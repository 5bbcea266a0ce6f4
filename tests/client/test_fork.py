"""After os.fork() the child must never use, close or END the parent's pooled connections.

The child reports what it saw through a pipe and always leaves with os._exit; the parent
waits for it with a deadline and kills it if it hangs.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from kaffi.client import AsyncClient, Client
from tests.support import FakeFaktory

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(work: Callable[[], dict[str, Any]], timeout: float = 30.0) -> dict[str, Any]:
    """Run ``work`` in a forked child and return the dict it produced."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads (the fake server's).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            try:
                result = work()
            except BaseException as exc:
                result = {"error": repr(exc)}
            os.write(write_end, json.dumps(result).encode())
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "the child did not report in time"
            ready, _, _ = select.select([read_end], [], [], left)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.01)
    return json.loads(b"".join(chunks)) if chunks else {"error": "no report"}


def test_child_opens_its_own_connection(fake: FakeFaktory) -> None:
    with Client(fake.url) as client:
        client.push({"jobtype": "parent"})
        assert client.pool.idle == 1

        def child() -> dict[str, Any]:
            idle_before = client.pool.idle
            jid = client.push({"jobtype": "child"})
            return {"idle_before": idle_before, "jid": jid, "pid": os.getpid()}

        report = in_child(child)
        assert "error" not in report, report
        assert report["idle_before"] == 0
        # The child's PUSH came on a connection of its own, HELLOed with its pid...
        fake.wait_for(lambda: len(fake.sessions) == 2 and fake.sessions[1].closed)
        assert any(report["jid"] in line for line in fake.sessions[1].lines)
        # ...and the parent's connection was neither ENDed nor closed, and still works.
        assert not fake.sessions[0].ended
        assert not fake.sessions[0].closed
        client.push({"jobtype": "parent-again"})
        assert len(fake.sessions) == 2
        assert any("parent-again" in line for line in fake.sessions[0].lines)


def test_connection_borrowed_across_fork_is_not_pooled_in_the_child(fake: FakeFaktory) -> None:
    with Client(fake.url) as client:
        conn = client.pool.acquire()

        def child() -> dict[str, Any]:
            client.pool.release(conn)
            return {"idle": client.pool.idle, "in_use": client.pool.in_use}

        report = in_child(child)
        assert report == {"idle": 0, "in_use": 0}
        client.pool.release(conn)
        assert client.pool.idle == 1
        client.push({"jobtype": "A"})
        assert len(fake.sessions) == 1
        assert not fake.sessions[0].ended


def test_async_client_in_a_child(fake: FakeFaktory) -> None:
    client = AsyncClient(fake.url)

    async def parent_push() -> None:
        await client.push({"jobtype": "parent"})

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(parent_push())

        def child() -> dict[str, Any]:
            jid = asyncio.run(client.push({"jobtype": "child"}))
            return {"jid": jid}

        report = in_child(child)
        assert "error" not in report, report
        fake.wait_for(lambda: len(fake.sessions) == 2)
        assert not fake.sessions[0].ended
        loop.run_until_complete(parent_push())
        assert len(fake.sessions) == 2
        loop.run_until_complete(client.close())
    finally:
        loop.close()
