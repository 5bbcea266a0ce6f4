"""kaffi.contrib.asgi with FastAPI: through its TestClient, and through a real uvicorn
server answering real HTTP requests while the Faktory server is slow to reply."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from kaffi import App
from kaffi.client import AsyncClient
from kaffi.contrib.asgi import get_app, get_async_client, kaffi_lifespan
from kaffi.errors import ConfigurationError, ConnectError
from tests.contrib.slow_proxy import HoldingProxy

WAIT = 30.0


def build(kaffi_app: App, **lifespan_options: Any) -> FastAPI:
    """A FastAPI service enqueuing a report job, with kaffi's lifespan."""

    @kaffi_app.task(queue="reports")
    async def build_report(report_id: int) -> None:
        """The job the endpoints enqueue (run by a worker elsewhere)."""

    api = FastAPI(lifespan=kaffi_lifespan(kaffi_app, **lifespan_options))

    @api.post("/reports/{report_id}", status_code=202)
    async def enqueue(
        report_id: int,
        client: AsyncClient = Depends(get_async_client),  # noqa: B008 - FastAPI's idiom
        app: App = Depends(get_app),  # noqa: B008
    ) -> dict[str, Any]:
        jid = await build_report.delay_async(report_id)
        return {"jid": jid, "pool": client is app.async_client and app is kaffi_app}

    @api.post("/blocking/{report_id}", status_code=202)
    async def enqueue_blocking(report_id: int) -> dict[str, str]:
        # The mistake the lifespan's client avoids: a blocking push on the event loop.
        return {"jid": build_report.delay(report_id)}

    @api.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    return api


def queued(server: Any, queue: str) -> int:
    count: int = server.info()["faktory"]["queues"].get(queue, 0)
    return count


# -- the TestClient ---------------------------------------------------------------------------


def test_lifespan_opens_the_pool_and_endpoints_get_it(faktory_server: Any) -> None:
    kaffi_app = App(faktory_server.url)
    api = build(kaffi_app)
    with TestClient(api) as http:
        answer = http.post("/reports/7")
        assert answer.status_code == 202
        body = answer.json()
        assert body["pool"] is True
    assert queued(faktory_server, "reports") == 1
    with App(faktory_server.url) as reader:
        job = reader.client.fetch("reports")
    assert job is not None
    assert job.jid == body["jid"]
    assert job.args == [7]


def test_lifespan_fails_the_start_up_when_the_server_cannot_be_reached() -> None:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        api = build(App(f"tcp://127.0.0.1:{port}", connect_timeout=5))
        with pytest.raises(ConnectError), TestClient(api):
            pass


def test_without_connect_the_start_up_does_not_touch_the_server() -> None:
    kaffi_app = App("tcp://127.0.0.1:1")
    with TestClient(build(kaffi_app, connect=False)) as http:
        assert http.get("/ping").json() == {"ok": True}


def test_an_inner_lifespan_runs_inside_and_can_push(faktory_server: Any) -> None:
    kaffi_app = App(faktory_server.url)
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def mine(api: Any) -> AsyncIterator[dict[str, str]]:
        await kaffi_app.async_client.push(kaffi_app.async_client.job("warm_up"))
        events.append("started")
        yield {"greeting": "hello"}
        events.append("stopped")

    api = build(kaffi_app, lifespan=mine)

    @api.get("/greeting")
    async def greeting(request: Request) -> dict[str, str]:
        greeting: str = request.state.greeting
        return {"greeting": greeting}

    with TestClient(api) as http:
        assert http.post("/reports/1").status_code == 202
        assert http.get("/greeting").json() == {"greeting": "hello"}
    assert events == ["started", "stopped"]
    assert queued(faktory_server, "default") == 1


def test_the_dependency_without_the_lifespan_says_what_is_missing(faktory_server: Any) -> None:
    kaffi_app = App(faktory_server.url)
    api = build(kaffi_app)
    api.router.lifespan_context = _no_lifespan
    with TestClient(api) as http, pytest.raises(ConfigurationError, match="kaffi_lifespan"):
        http.post("/reports/1")


@contextlib.asynccontextmanager
async def _no_lifespan(api: Any) -> AsyncIterator[None]:
    yield


# -- a real uvicorn ---------------------------------------------------------------------------


@contextlib.contextmanager
def uvicorn_serving(api: FastAPI) -> Iterator[str]:
    """Run ``api`` on uvicorn (127.0.0.1, a free port) in a thread; yield its base URL."""
    config = uvicorn.Config(
        api,
        host="127.0.0.1",
        port=0,
        lifespan="on",
        loop="asyncio",
        http="h11",
        ws="none",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped while starting"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(WAIT)
        assert not thread.is_alive(), "uvicorn did not stop"


def http(method: str, url: str) -> dict[str, Any]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


class InFlight:
    """One HTTP request made in a thread, to be waited for later."""

    def __init__(self, method: str, url: str) -> None:
        self.done = threading.Event()
        self.body: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(method, url), daemon=True)
        self._thread.start()

    def _run(self, method: str, url: str) -> None:
        try:
            self.body = http(method, url)
        except BaseException as exc:  # reported by result()
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> dict[str, Any]:
        assert self.done.wait(WAIT), "the request did not finish"
        self._thread.join(WAIT)
        if self.error is not None:
            raise self.error
        assert self.body is not None
        return self.body


def test_a_slow_server_delays_only_the_request_that_awaits_it(faktory_server: Any) -> None:
    with HoldingProxy(faktory_server.host, faktory_server.port) as proxy:
        kaffi_app = App(proxy.url)
        with uvicorn_serving(build(kaffi_app)) as base:
            proxy.hold()
            waiting = InFlight("POST", f"{base}/reports/42")
            assert proxy.push_seen.wait(WAIT), "the PUSH never reached the proxy"
            # The push waits for the server; the loop still serves everyone else.
            assert http("GET", f"{base}/ping") == {"ok": True}
            assert not waiting.done.is_set()
            proxy.release()
            body = waiting.result()
            assert body["pool"] is True
    assert queued(faktory_server, "reports") == 1


def test_a_blocking_push_in_an_endpoint_would_stall_every_request(faktory_server: Any) -> None:
    # The control for the test above: the same wait with delay() holds the whole loop.
    with HoldingProxy(faktory_server.host, faktory_server.port) as proxy:
        kaffi_app = App(proxy.url)
        kaffi_app.client.info()  # the sync pool's connection, greeted before the hold
        with uvicorn_serving(build(kaffi_app)) as base:
            proxy.hold()
            blocking = InFlight("POST", f"{base}/blocking/42")
            assert proxy.push_seen.wait(WAIT), "the PUSH never reached the proxy"
            ping = InFlight("GET", f"{base}/ping")
            # Not a timing assumption: while the loop is blocked the ping cannot finish.
            assert not ping.done.wait(0.5)
            proxy.release()
            assert ping.result() == {"ok": True}
            assert "jid" in blocking.result()
        kaffi_app.close()
    assert queued(faktory_server, "reports") == 1
