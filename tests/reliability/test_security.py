"""Security: passwords, TLS with a throwaway CA, the loopback rule, caps, secret-free logs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kaffi
from kaffi.errors import AuthenticationError, ConfigurationError, ConnectError, KaffiError
from kaffi.protocol.resp import DEFAULT_MAX_LINE, ErrorReply, SimpleReply
from kaffi.server import EmbeddedServer
from kaffi.server.embedded import DEFAULT_MAX_CONNECTIONS
from tests.reliability import certs
from tests.reliability.proxy import FaultProxy
from tests.reliability.support import (
    Project,
    RawSession,
    is_err,
    kaffi_process,
    show,
    wait_listening,
)
from tests.support import WAIT, embedded_server, free_port, start, wait_until

pytestmark = pytest.mark.reliability

PASSWORD = "correct-horse-7f3a91"
#: A clearly failing authentication must be over long before any retry loop could run.
FAST = 5.0


@pytest.fixture
def secured() -> Iterator[EmbeddedServer]:
    with embedded_server(password=PASSWORD) as server:
        yield server


# -- passwords -----------------------------------------------------------------------------


def test_the_right_password_works(secured: EmbeddedServer) -> None:
    with kaffi.Client(f"tcp://:{PASSWORD}@127.0.0.1:{secured.port}", timeout=10) as client:
        jid = client.push({"jobtype": "secure", "args": [1]})
        job = client.fetch("default")
        assert job is not None
        assert job.jid == jid
        client.ack(jid)
    assert secured.info()["faktory"]["sets"]["working"] == 0


def test_a_wrong_password_fails_at_once_and_does_not_storm(secured: EmbeddedServer) -> None:
    with FaultProxy("127.0.0.1", secured.port) as proxy:
        client = kaffi.Client(proxy.url("not-the-password"), timeout=10, connect_timeout=10)
        try:
            for attempt in (1, 2, 3):
                started = time.monotonic()
                with pytest.raises(AuthenticationError) as info:
                    client.push({"jobtype": "secure", "args": []})
                elapsed = time.monotonic() - started
                assert elapsed < FAST, f"attempt {attempt} took {elapsed:.2f}s"
                text = str(info.value)
                assert "Invalid password" in text, text
                assert "password" in text.lower(), text
                assert "not-the-password" not in text, f"the error shows the password: {text}"
                # One connection per call: the client never retries a refused password.
                assert proxy.accepted == attempt, (
                    f"{proxy.accepted} connections for {attempt} failed pushes"
                )
        finally:
            client.close()
    assert secured.info()["faktory"]["queues"].get("default", 0) == 0


def test_no_password_against_a_secured_server_is_refused_clearly(secured: EmbeddedServer) -> None:
    with FaultProxy("127.0.0.1", secured.port) as proxy:
        client = kaffi.Client(proxy.url(), timeout=10, connect_timeout=10)
        try:
            started = time.monotonic()
            with pytest.raises(AuthenticationError) as info:
                client.info()
            assert time.monotonic() - started < FAST
            assert "password" in str(info.value).lower(), str(info.value)
            assert proxy.accepted == 1, f"{proxy.accepted} connections for one refused call"
        finally:
            client.close()


def test_the_async_client_fails_at_once_on_a_wrong_password(secured: EmbeddedServer) -> None:
    async def scenario(url: str) -> None:
        client = kaffi.AsyncClient(url, timeout=10, connect_timeout=10)
        try:
            with pytest.raises(AuthenticationError):
                await client.push({"jobtype": "secure", "args": []})
            with pytest.raises(AuthenticationError):
                await client.info()
        finally:
            await client.close()

    with FaultProxy("127.0.0.1", secured.port) as proxy:
        started = time.monotonic()
        asyncio.run(scenario(proxy.url("wrong")))
        assert time.monotonic() - started < 2 * FAST
        assert proxy.accepted == 2, f"{proxy.accepted} connections for two refused calls"


def test_a_worker_with_a_wrong_password_stops_with_the_error(secured: EmbeddedServer) -> None:
    app = kaffi.App(f"tcp://:wrong@127.0.0.1:{secured.port}")
    concurrency = 4
    with FaultProxy("127.0.0.1", secured.port) as proxy:
        worker = app.worker(url=proxy.url("wrong"), concurrency=concurrency, timeout=1)
        started = time.monotonic()
        thread, errors = start(worker)
        thread.join(WAIT)
        elapsed = time.monotonic() - started
        alive = thread.is_alive()
        if alive:
            worker.stop(timeout=WAIT)
        app.close()
        assert not alive, f"the worker kept running for {elapsed:.1f}s on a refused password"
        assert errors, errors
        assert isinstance(errors[0], AuthenticationError), errors
        assert elapsed < 3 * FAST, f"the worker took {elapsed:.1f}s to give up"
        # Every slot and the heartbeat may try once; nothing may retry after the refusal.
        assert proxy.accepted <= concurrency + 2, (
            f"{proxy.accepted} connection attempts from a worker with {concurrency} slots"
        )


def test_the_worker_command_exits_non_zero_on_a_wrong_password(
    secured: EmbeddedServer, tmp_path: Path
) -> None:
    project = Project.create(tmp_path)
    url = f"tcp://:wrong@127.0.0.1:{secured.port}"
    with kaffi_process(
        ["worker", "rel_app:app", "--concurrency", "2", "--timeout", "1"],
        cwd=tmp_path,
        env=project.env(url),
    ) as proc:
        code = proc.wait(WAIT)
        output = proc.log.text()
    assert code != 0, f"exit status {code}; output:\n{output}"
    assert "password" in output.lower(), output
    assert "Traceback" not in output, output


# -- secrets in logs --------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(f"{record.name}: {text}")


def test_the_server_never_logs_the_password_or_a_pwdhash() -> None:
    collect = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    kaffi_logger = logging.getLogger("kaffi")
    old_kaffi = kaffi_logger.level
    kaffi_logger.setLevel(logging.DEBUG)
    forged = hashlib.sha256(b"a forged hash that must stay secret").hexdigest()
    try:
        with embedded_server(password=PASSWORD) as server:
            with kaffi.Client(server.url, timeout=10) as client:
                client.push({"jobtype": "logged", "args": []})
            # A wrong pwdhash, sent by hand so we know exactly what must not appear.
            with RawSession("127.0.0.1", server.port) as raw:
                hi = raw.reply()
                assert isinstance(hi, SimpleReply), show(hi)
                assert '"s":' in hi.text, show(hi)
                line = b'HELLO {"v":2,"hostname":"h","pwdhash":"%s"}\r\n' % forged.encode()
                answer = raw.request(line)
                assert is_err(answer, "Invalid password"), show(answer)
                assert raw.at_eof(), "the server kept the connection after a wrong password"
            with (
                kaffi.Client(f"tcp://:{PASSWORD}-wrong@127.0.0.1:{server.port}", timeout=10) as bad,
                pytest.raises(AuthenticationError),
            ):
                bad.info()
            logged_url = repr(server)
    finally:
        root.removeHandler(collect)
        root.setLevel(old_level)
        kaffi_logger.setLevel(old_kaffi)
    text = "\n".join(collect.lines) + "\n" + logged_url
    assert PASSWORD not in text, f"the password appears in the logs:\n{text}"
    assert forged not in text, f"a pwdhash appears in the logs:\n{text}"


def test_the_server_command_never_prints_the_password(tmp_path: Path) -> None:
    port = free_port()
    project = Project.create(tmp_path)
    forged = hashlib.sha256(b"another forged hash").hexdigest()
    with kaffi_process(
        [
            "server",
            "--bind",
            f"127.0.0.1:{port}",
            "--data",
            str(tmp_path / "data.db"),
            "--password",
            PASSWORD,
            "--log-level",
            "debug",
        ],
        cwd=tmp_path,
        env=project.env(f"tcp://127.0.0.1:{port}"),
    ) as proc:
        wait_listening(port, proc)
        with kaffi.Client(f"tcp://:{PASSWORD}@127.0.0.1:{port}", timeout=10) as client:
            client.push({"jobtype": "logged", "args": []})
        with RawSession("127.0.0.1", port) as raw:
            raw.reply()
            answer = raw.request(
                b'HELLO {"v":2,"hostname":"h","pwdhash":"%s"}\r\n' % forged.encode()
            )
            assert is_err(answer, "Invalid password"), show(answer)
        proc.signal(signal.SIGTERM)
        proc.wait(WAIT)
        output = proc.log.text()
    assert output.strip(), "the server printed nothing (it should say where it listens)"
    assert str(port) in output, f"the server does not say where it listens:\n{output}"
    assert PASSWORD not in output, f"the password appears in the output:\n{output}"
    assert forged not in output, f"a pwdhash appears in the output:\n{output}"


# -- TLS ------------------------------------------------------------------------------------

needs_pki = pytest.mark.skipif(
    certs.available() is None, reason="neither the cryptography package nor openssl is available"
)


@pytest.fixture
def pki(tmp_path: Path) -> certs.Pki:
    return certs.make_pki(tmp_path)


@needs_pki
def test_tls_verified_with_the_test_ca(pki: certs.Pki) -> None:
    with embedded_server(tls_cert=pki.server_cert, tls_key=pki.server_key) as server:
        assert server.url.startswith("tcp+tls://"), server.url
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        with kaffi.Client(f"tcp+tls://127.0.0.1:{server.port}", tls=context, timeout=10) as client:
            jid = client.push({"jobtype": "tls", "args": ["over tls"]})
            job = client.fetch("default")
            assert job is not None
            assert job.jid == jid
            assert job.args == ["over tls"]
            client.ack(jid)

        async def through_async() -> None:
            async with kaffi.AsyncClient(
                f"tcp+tls://localhost:{server.port}", tls=context, timeout=10
            ) as aclient:
                await aclient.push({"jobtype": "tls", "args": []})
                info = await aclient.info()
                assert info.faktory.queues.get("default") == 1

        asyncio.run(through_async())


@needs_pki
def test_tls_refused_without_the_ca(pki: certs.Pki) -> None:
    with embedded_server(tls_cert=pki.server_cert, tls_key=pki.server_key) as server:
        client = kaffi.Client(f"tcp+tls://127.0.0.1:{server.port}", timeout=5, connect_timeout=5)
        try:
            started = time.monotonic()
            with pytest.raises(ConnectError) as info:
                client.push({"jobtype": "tls", "args": []})
            assert time.monotonic() - started < FAST
        finally:
            client.close()
        text = str(info.value)
        assert "TLS" in text, text
        assert "certificate verify failed" in text, text
        assert server.info()["faktory"]["queues"].get("default", 0) == 0


@needs_pki
def test_tls_refused_for_the_wrong_hostname(pki: certs.Pki) -> None:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    with embedded_server(tls_cert=pki.wrong_cert, tls_key=pki.wrong_key) as server:
        client = kaffi.Client(
            f"tcp+tls://127.0.0.1:{server.port}", tls=context, timeout=5, connect_timeout=5
        )
        try:
            with pytest.raises(ConnectError) as info:
                client.info()
        finally:
            client.close()
        text = str(info.value)
        assert "TLS" in text, text
        assert "mismatch" in text.lower(), text
    # The same CA, the right name: the CA itself was fine, only the name was wrong.
    with (
        embedded_server(tls_cert=pki.server_cert, tls_key=pki.server_key) as server,
        kaffi.Client(f"tcp+tls://localhost:{server.port}", tls=context, timeout=10) as ok,
    ):
        assert ok.info().faktory.sets["working"] == 0


@needs_pki
def test_a_worker_over_tls_with_a_password_runs_jobs(pki: certs.Pki, tmp_path: Path) -> None:
    project = Project.create(tmp_path)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    with embedded_server(
        password=PASSWORD, tls_cert=pki.server_cert, tls_key=pki.server_key
    ) as server:
        url = f"tcp+tls://:{PASSWORD}@localhost:{server.port}"
        with kaffi.Client(url, tls=context, timeout=10) as client:
            jids = {
                client.push({"jobtype": "work", "args": [n, 0.0], "reserve_for": 60})
                for n in range(5)
            }
        env = project.env(url)
        # The worker's default context trusts what OpenSSL's SSL_CERT_FILE names.
        env["SSL_CERT_FILE"] = str(pki.ca_cert)
        with kaffi_process(
            ["worker", "rel_app:app", "--burst", "--concurrency", "2"], cwd=tmp_path, env=env
        ) as proc:
            code = proc.wait(WAIT)
            output = proc.log.text()
        assert code == 0, output
        assert set(project.runs()) == jids, output
        assert PASSWORD not in output, f"the worker printed the password:\n{output}"


@needs_pki
def test_plain_tcp_against_a_tls_server_errors_within_the_timeout(pki: certs.Pki) -> None:
    with embedded_server(tls_cert=pki.server_cert, tls_key=pki.server_key) as server:
        client = kaffi.Client(f"tcp://127.0.0.1:{server.port}", timeout=2, connect_timeout=2)
        try:
            started = time.monotonic()
            with pytest.raises(KaffiError):
                client.info()
            assert time.monotonic() - started < 2 + FAST
        finally:
            client.close()


# -- the loopback rule and the caps --------------------------------------------------------------


@pytest.mark.parametrize("bind", ["0.0.0.0:7419", "192.0.2.10:0", "[::]:0"])
def test_a_non_loopback_bind_without_a_password_is_refused(bind: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        embedded_server(bind=bind)
    text = str(info.value)
    assert "password" in text, text
    # With a password it is allowed (constructed only: nothing listens beyond loopback).
    server = embedded_server(bind=bind, password=PASSWORD)
    assert not server.running


def test_the_server_command_refuses_a_non_loopback_bind(tmp_path: Path) -> None:
    project = Project.create(tmp_path)
    with kaffi_process(
        ["server", "--bind", "0.0.0.0:0", "--memory"],
        cwd=tmp_path,
        env=project.env("tcp://127.0.0.1:7419"),
    ) as proc:
        code = proc.wait(WAIT)
        output = proc.log.text()
    assert code != 0, f"exit status {code}; output:\n{output}"
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "password" in lines[0], output
    assert "Traceback" not in output, output


def test_a_line_over_the_cap_gets_err_and_a_close() -> None:
    with embedded_server() as server:
        assert server.max_line == DEFAULT_MAX_LINE
        with RawSession("127.0.0.1", server.port, timeout=20) as raw:
            raw.hello()
            # Exactly one byte over the cap and no line end: the server has read all we
            # sent when it decides, so it closes with a FIN (our -ERR arrives), not a RST.
            raw.send(b"PUSH " + b"x" * (DEFAULT_MAX_LINE - 4))
            answer = raw.reply()
            assert isinstance(answer, ErrorReply), show(answer)
            assert "longer than" in answer.message, show(answer)
            assert raw.at_eof(), "the server kept reading after the line passed the cap"
        with kaffi.Client(server.url, timeout=10) as client:
            client.push({"jobtype": "after-cap", "args": []})
            assert client.info().faktory.queues["default"] == 1


def test_the_connection_count_is_capped_like_faktory() -> None:
    assert DEFAULT_MAX_CONNECTIONS == 2000
    limit = 40
    with embedded_server(max_connections=limit) as server:
        sessions = [RawSession("127.0.0.1", server.port) for _ in range(limit)]
        try:
            for raw in sessions:
                hi = raw.reply()
                assert isinstance(hi, SimpleReply), show(hi)
                assert hi.text.startswith("HI "), show(hi)
            with RawSession("127.0.0.1", server.port) as extra:
                answer = extra.reply()
                assert is_err(answer, f"too many connections: {limit}"), show(answer)
                assert extra.at_eof(), "the connection over the limit was not closed"
        finally:
            for raw in sessions:
                raw.close()
        # Freed slots are usable again.
        with kaffi.Client(server.url, timeout=10) as client:
            refusals: list[KaffiError] = []

            def pushed() -> bool:
                try:
                    client.push({"jobtype": "after-flood", "args": []})
                except KaffiError as exc:
                    refusals.append(exc)
                    return False
                return True

            wait_until(pushed, lambda: f"a push to succeed; last error: {refusals[-1:]}")
            assert client.info().faktory.queues["default"] == 1
