"""The embedded server over real sockets: blocking FETCH, limits, auth, TLS, controls."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from kaffi.errors import ConfigurationError, KaffiError
from kaffi.server import EmbeddedServer
from kaffi.server.network import TICK_INTERVAL
from tests.server.wire import Wire, push_line
from tests.support import embedded_server, wait_until, waiting_fetches

DEADLINE = 10.0


@pytest.fixture
def patient() -> Iterator[EmbeddedServer]:
    """A server whose FETCH waits 30 s, so a slow machine cannot turn a wake-up into $-1."""
    with embedded_server(fetch_hold=30.0) as server:
        yield server


def test_blocked_fetch_is_woken_by_push(patient: EmbeddedServer, wire: Callable[..., Wire]) -> None:
    srv = patient
    worker = wire("w-1", server=srv)
    producer = wire(server=srv)
    started = time.monotonic()
    worker.write(b"FETCH q1 q2\r\n")
    wait_until(lambda: waiting_fetches(srv) == 1, "the FETCH to block")
    assert producer.send(push_line(jid="jid-wake-0001", queue="q2")) == ["+OK"]
    reply = worker.reply()
    assert json.loads(reply[1])["jid"] == "jid-wake-0001"
    assert time.monotonic() - started < 25, "the FETCH was not woken by the PUSH"
    assert srv.info()["faktory"]["sets"]["working"] == 1


def test_commands_pipelined_behind_a_blocked_fetch_run_after_it(
    patient: EmbeddedServer, wire: Callable[..., Wire]
) -> None:
    srv = patient
    worker = wire("w-1", server=srv)
    worker.write(b'FETCH q1\r\nACK {"jid":"jid-pipe-00001"}\r\nINFO\r\n')
    wait_until(lambda: waiting_fetches(srv) == 1, "the FETCH to block")
    wire(server=srv).send(push_line(jid="jid-pipe-00001", queue="q1"))
    assert json.loads(worker.reply()[1])["jid"] == "jid-pipe-00001"
    assert worker.reply() == ["+OK"]
    assert json.loads(worker.reply()[1])["faktory"]["sets"]["working"] == 0


def test_job_for_a_vanished_fetcher_goes_back_to_the_front(
    patient: EmbeddedServer, wire: Callable[..., Wire]
) -> None:
    srv = patient
    gone = wire("w-gone", server=srv)
    gone.write(b"FETCH default\r\n")
    wait_until(lambda: waiting_fetches(srv) == 1, "the FETCH to block")
    gone.close()
    wait_until(lambda: waiting_fetches(srv) == 0, "the server to notice the close")
    producer = wire(server=srv)
    producer.send(push_line(jid="jid-first-0001"))
    producer.send(push_line(jid="jid-second-001"))
    assert srv.info()["faktory"]["sets"]["working"] == 0
    fetched = wire("w-2", server=srv).send("FETCH default")
    assert json.loads(fetched[1])["jid"] == "jid-first-0001"


def test_reservation_expiry_retry_and_scheduled_with_advance_clock(
    srv: EmbeddedServer, wire: Callable[..., Wire]
) -> None:
    worker = wire("w-1")
    worker.send(push_line(jid="jid-expire-001", reserve_for=60, retry=3))
    assert worker.send("FETCH default")[0].startswith("$")
    srv.advance_clock(61)
    # 61 s without a BEAT: the worker is forgotten and its connection closed.
    assert worker.closed_by_server()
    w = wire()
    sets = srv.info()["faktory"]["sets"]
    assert sets["working"] == 0
    assert sets["retries"] == 1
    assert w.send('ACK {"jid":"jid-expire-001"}') == ["+OK"]  # late ACK still +OK
    srv.advance_clock(15 + 29 + 1)
    job = json.loads(w.send("FETCH default")[1])
    assert job["failure"]["errtype"] == "ReservationExpired"
    w.send(push_line(jid="jid-later-0001", at="2099-12-31T00:00:00Z"))
    srv.advance_clock(80 * 365 * 86400)
    assert json.loads(w.send("FETCH default")[1])["jid"] == "jid-later-0001"


def test_scheduled_and_retry_sets_are_checked_at_least_every_second(
    srv: EmbeddedServer, wire: Callable[..., Wire]
) -> None:
    # The issue asks for "at least every second"; the timer itself proves it below.
    assert TICK_INTERVAL <= 1.0
    w = wire("w-tick")
    soon = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    at = soon.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert w.send(push_line(jid="jid-soon-00001", at=at, queue="tick")) == ["+OK"]
    assert srv.info()["faktory"]["sets"]["scheduled"] == 1
    # No advance_clock here: only the server's own timer can move the job.
    wait_until(lambda: srv.info()["faktory"]["queues"].get("tick") == 1, "the scheduled job")
    assert srv.info()["faktory"]["sets"]["scheduled"] == 0

    assert json.loads(w.send("FETCH tick")[1])["jid"] == "jid-soon-00001"
    assert w.send('FAIL {"jid":"jid-soon-00001","errtype":"E","message":"m"}') == ["+OK"]
    assert srv.info()["faktory"]["sets"]["retries"] == 1

    def move_clock() -> None:
        # Past the longest first backoff (15 + 29 s), without running the timer's work.
        assert srv.core is not None
        srv.core.clock.advance(15 + 29 + 1)

    srv._call(move_clock)
    wait_until(lambda: srv.info()["faktory"]["queues"].get("tick") == 1, "the retry")
    assert srv.info()["faktory"]["sets"]["retries"] == 0


def test_workers_quiet_terminate_and_expiry(srv: EmbeddedServer, wire: Callable[..., Wire]) -> None:
    w = wire("w-9")
    assert w.send('BEAT {"wid":"w-9","rss_kb":2048}') == ["+OK"]
    assert srv.workers()[0]["rss_kb"] == 2048
    assert srv.quiet_worker("w-9") is True
    assert w.send('BEAT {"wid":"w-9"}')[1] == '{"state":"quiet"}'
    admin = wire()
    assert admin.send("KAFFI TERMINATE w-9") == ["+OK"]
    assert admin.send("KAFFI QUIET nobody") == ["-ERR unknown worker nobody"]
    assert json.loads(admin.send("KAFFI WORKERS")[1])[0]["state"] == "terminate"
    assert w.send('BEAT {"wid":"w-9"}')[1] == '{"state":"terminate"}'
    assert srv.terminate_worker("nobody") is False
    srv.advance_clock(61)
    assert w.closed_by_server()
    assert admin.send('BEAT {"wid":"w-9"}') == ["-ERR unknown worker w-9"]


def test_connection_limit(wire: Callable[..., Wire]) -> None:
    with embedded_server(max_connections=3) as small:
        for _ in range(3):
            wire(server=small)
        extra = wire(server=small, greet=False)
        assert extra.line() == "-ERR too many connections: 3"
        assert extra.closed_by_server()


def test_line_cap(wire: Callable[..., Wire]) -> None:
    with embedded_server(max_line=1024) as capped:
        w = wire(server=capped)
        w.write(b"PUSH " + b"x" * 4000)
        assert w.line() == "-ERR command line longer than 1024 bytes"
        assert w.closed_by_server()
        assert wire(server=capped).send("INFO")[0].startswith("$")


def test_handshake_must_start_with_hello(wire: Callable[..., Wire]) -> None:
    w = wire(greet=False)
    assert w.line() == '+HI {"v":2}'
    w.write(b"\xff\xfe garbage\r\n")
    assert w.closed_by_server()


def test_password(wire: Callable[..., Wire], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with embedded_server(password="s3cr3t-pw") as locked:
        assert locked.url == f"tcp://:s3cr3t-pw@127.0.0.1:{locked.port}"
        assert wire(server=locked, password="s3cr3t-pw").send("INFO")[0].startswith("$")
        bad = wire(server=locked, greet=False)
        hi = json.loads(bad.line()[4:])
        assert set(hi) == {"v", "i", "s"}
        bad.write(b'HELLO {"v":2,"pwdhash":"deadbeef"}\r\n')
        assert bad.line() == "-ERR Invalid password"
        assert bad.closed_by_server()
    assert "s3cr3t-pw" not in caplog.text
    assert "deadbeef" not in caplog.text


def test_loopback_only_without_password() -> None:
    with pytest.raises(ConfigurationError, match="without a password"):
        EmbeddedServer(bind="0.0.0.0:0")
    EmbeddedServer(bind="0.0.0.0:0", password="x")  # allowed (not started here)
    with pytest.raises(ConfigurationError, match="tls_key"):
        EmbeddedServer(tls_cert="cert.pem")


@pytest.mark.parametrize("hold", [0, -1.0, 0.0001, 3601, float("nan"), float("inf"), True, "2"])
def test_fetch_hold_out_of_range_or_not_a_number_is_refused(hold: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^fetch_hold must be") as info:
        EmbeddedServer(fetch_hold=hold)
    assert repr(hold) in str(info.value)


def test_fetch_hold_defaults_to_faktorys_two_seconds_and_can_be_shortened(
    wire: Callable[..., Wire],
) -> None:
    assert EmbeddedServer().fetch_hold == 2.0
    assert EmbeddedServer(fetch_hold=1).fetch_hold == 1.0
    with EmbeddedServer(fetch_hold=0.05) as quick:
        w = wire("w-quick", server=quick)
        started = time.monotonic()
        assert w.send("FETCH empty-queue") == ["$-1"]
        # Well under Faktory's 2 s even on a loaded machine.
        assert time.monotonic() - started < 1.5


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
# asyncio 3.11 leaves the server side of a failed TLS handshake for the GC to close.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_tls(tmp_path: Path, wire: Callable[..., Wire]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with embedded_server(tls_cert=cert, tls_key=key) as secure:
        assert secure.url.startswith("tcp+tls://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(cert))
        w = wire(server=secure, tls=ctx)
        assert w.send(push_line(jid="jid-tls-000001")) == ["+OK"]
        with pytest.raises(ssl.SSLError):
            wire(server=secure, tls=ssl.create_default_context())
        assert w.send("INFO")[0].startswith("$")
    gc.collect()


def test_asyncio_host() -> None:
    async def main() -> dict[str, Any]:
        async with embedded_server() as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            assert (await reader.readline()).startswith(b"+HI")
            writer.write(b'HELLO {"v":2}\r\nFLUSH\r\n')
            assert await reader.readline() == b"+OK\r\n"
            assert await reader.readline() == b"+OK\r\n"
            writer.close()
            await writer.wait_closed()
            return server.info()

    assert asyncio.run(main())["faktory"]["total_queues"] == 0


def test_serve_forever_stops_on_cancel() -> None:
    async def main() -> None:
        server = embedded_server()
        await server.start_async()
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.running

    asyncio.run(main())


def test_misuse_is_reported() -> None:
    server = embedded_server()
    with pytest.raises(KaffiError, match="not running"):
        _ = server.url
    with pytest.raises(KaffiError, match="not running"):
        server.info()
    with server:
        assert "listening on 127.0.0.1" in repr(server)
        with pytest.raises(KaffiError, match="already running"):
            server.start()
    assert "stopped" in repr(server)
    server.stop()  # a second stop is harmless


def test_controls_from_another_thread_of_an_asyncio_host() -> None:
    async def main() -> int:
        async with embedded_server() as server:
            loop = asyncio.get_running_loop()
            info = await loop.run_in_executor(None, server.info)
            await loop.run_in_executor(None, server.advance_clock, 5)
            return int(info["faktory"]["total_queues"])

    assert asyncio.run(main()) == 0


def test_serve_forever_as_a_task_stopped_from_another_thread() -> None:
    async def main() -> None:
        server = embedded_server()
        await server.start_async()
        task = asyncio.ensure_future(server.serve_forever())
        with pytest.raises(KaffiError, match="stop_async"):
            server.stop()  # on the server's own loop it would deadlock
        running = [server.running]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, server.stop)
        await asyncio.wait_for(task, 30)  # serve_forever returned by itself
        running.append(server.running)
        assert running == [True, False]
        server.stop()  # stopping again is harmless

    asyncio.run(main())
