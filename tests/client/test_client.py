"""Client: every method against the fake server, the retry rules, and the pool rules."""

from __future__ import annotations

import json
import select
import threading
from datetime import datetime, timezone
from typing import Any

import pytest

from kaffi.client import Client, Job, resolve_settings
from kaffi.client.client import PUSHB_CHUNK
from kaffi.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectError,
    LocalProtocolError,
    PoolTimeout,
    ReadError,
    ReadTimeout,
    RemoteProtocolError,
    ServerError,
    ValidationError,
)
from kaffi.protocol.commands import format_exception_backtrace
from kaffi.protocol.models import JobPayload
from kaffi.protocol.resp import encode_bulk
from tests.support import CLOSE, SILENT, FakeFaktory, closed_port_url, wait_until


def sent_json(line: str) -> Any:
    return json.loads(line.split(" ", 1)[1])


# -- jobs -----------------------------------------------------------------------------


def test_push_a_dict_returns_its_jid(client: Client, fake: FakeFaktory) -> None:
    jid = client.push({"jobtype": "send_email", "args": ["a@b.c"], "queue": "mail"})
    job = sent_json(fake.commands("PUSH")[0])
    assert job["jid"] == jid
    assert job["jobtype"] == "send_email"
    assert job["args"] == ["a@b.c"]
    assert job["queue"] == "mail"
    assert job["retry"] == 25  # always explicit, see REFERENCE.md on Faktory's retry bug


def test_push_a_payload_and_a_job(client: Client, fake: FakeFaktory) -> None:
    payload = JobPayload.create(jobtype="A", jid="jid-payload-1")
    assert client.push(payload) == "jid-payload-1"
    job = Job("B", 1, 2, jid="jid-builder-1", queue="q")
    assert client.push(job) == "jid-builder-1"
    assert [sent_json(line)["jid"] for line in fake.commands("PUSH")] == [
        "jid-payload-1",
        "jid-builder-1",
    ]


def test_invalid_dict_is_refused_locally(client: Client, fake: FakeFaktory) -> None:
    with pytest.raises(ValidationError, match="queue") as info:
        client.push({"jobtype": "A", "queue": "bad queue!"})
    assert info.value.field == "queue"
    with pytest.raises(ValidationError, match="jid"):
        client.push({"jobtype": "A", "jid": "short"})
    with pytest.raises(ValidationError, match="reserve_for"):
        client.push({"jobtype": "A", "reserve_for": 90000})
    with pytest.raises(ValidationError, match="expected a Job"):
        client.push(["not", "a", "job"])  # type: ignore[arg-type]
    assert fake.commands("PUSH") == []


def test_job_builder(client: Client, fake: FakeFaktory) -> None:
    job = client.job("resize", "img.png", 300)
    job.queue = "images"
    job.retry = 3
    job.reserve_for = 600
    job.custom = {"trace": "t-1"}
    job.backtrace = 10
    job.priority = 9
    job.at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    jid = job.push()
    assert jid == job.jid
    sent = sent_json(fake.commands("PUSH")[0])
    assert sent["args"] == ["img.png", 300]
    assert sent["queue"] == "images"
    assert sent["retry"] == 3
    assert sent["reserve_for"] == 600
    assert sent["custom"] == {"trace": "t-1"}
    assert sent["backtrace"] == 10
    assert sent["at"] == "2030-01-02T03:04:05.000000Z"
    assert len(Job.new_jid()) >= 8
    assert Job.new_jid() != Job.new_jid()
    assert "resize" in repr(job)


def test_job_builder_validates_on_push(client: Client, fake: FakeFaktory) -> None:
    job = client.job("A")
    job.reserve_for = 90_000
    with pytest.raises(ValidationError, match="reserve_for"):
        job.push()
    assert fake.commands("PUSH") == []


def test_unbound_job_cannot_push() -> None:
    with pytest.raises(ConfigurationError, match="not bound"):
        Job("A").push()


def test_push_server_error_keeps_the_connection(client: Client, fake: FakeFaktory) -> None:
    fake.script("PUSH", b"-ERR jobs must have a jobtype parameter\r\n")
    with pytest.raises(ServerError) as info:
        client.push({"jobtype": "A"})
    assert info.value.code == "ERR"
    assert info.value.message == "jobs must have a jobtype parameter"
    assert info.value.command == "PUSH"
    client.push({"jobtype": "A"})
    assert len(fake.sessions) == 1
    assert client.pool.idle == 1


def test_push_bulk_in_chunks_with_rejections(client: Client, fake: FakeFaktory) -> None:
    jobs: list[Any] = [{"jobtype": "A", "args": [i]} for i in range(PUSHB_CHUNK * 2 + 500)]
    fake.script("PUSHB", encode_bulk('{"jid-bad-000001":"jobs must not be silly"}'))
    jobs[0] = {"jobtype": "A", "jid": "jid-bad-000001"}
    rejected = client.push_bulk(jobs)
    lines = fake.commands("PUSHB")
    assert [len(sent_json(line)) for line in lines] == [1000, 1000, 500]
    assert len(rejected) == 1
    assert rejected[0].jid == "jid-bad-000001"
    assert rejected[0].reason == "jobs must not be silly"
    assert rejected[0].payload["jobtype"] == "A"
    assert client.push_bulk([]) == []


def test_push_bulk_validates_everything_before_sending(client: Client, fake: FakeFaktory) -> None:
    with pytest.raises(ValidationError):
        client.push_bulk([{"jobtype": "A"}, {"jobtype": ""}])
    assert fake.commands("PUSHB") == []


def test_fetch(client: Client, fake: FakeFaktory) -> None:
    jid = client.push({"jobtype": "A", "queue": "low", "args": [1]})
    assert client.fetch("high", "low") is not None
    assert fake.commands("FETCH") == ["FETCH high low"]
    assert client.fetch("high", "low") is None
    client.push({"jobtype": "A", "jid": jid})
    job = client.fetch()
    assert job is not None
    assert job.jid == jid
    assert fake.commands("FETCH")[-1] == "FETCH default"
    with pytest.raises(ValidationError, match="queue"):
        client.fetch("bad queue")


def test_fetch_error(client: Client, fake: FakeFaktory) -> None:
    fake.script("FETCH", b"-ERR must call fetch with at least one queue\r\n")
    with pytest.raises(ServerError, match="at least one queue"):
        client.fetch("q")


def test_ack(client: Client, fake: FakeFaktory) -> None:
    client.ack("jid-00000001")
    assert sent_json(fake.commands("ACK")[0]) == {"jid": "jid-00000001"}
    with pytest.raises(ValidationError):
        client.ack("")


def raise_value_error() -> None:
    raise ValueError("it broke")


def test_fail_from_an_exception(client: Client, fake: FakeFaktory) -> None:
    try:
        raise_value_error()
    except ValueError as exc:
        client.fail("jid-00000001", exc)
    sent = sent_json(fake.commands("FAIL")[0])
    assert sent["jid"] == "jid-00000001"
    assert sent["errtype"] == "ValueError"
    assert sent["message"] == "it broke"
    assert len(sent["backtrace"]) == 2
    # Innermost first, as the worker formats it: file:line in function: source.
    assert sent["backtrace"][0].endswith(' in raise_value_error: raise ValueError("it broke")')
    assert "test_client.py:" in sent["backtrace"][1]


def test_fail_with_explicit_fields(client: Client, fake: FakeFaktory) -> None:
    client.fail("jid-00000001", errtype="Timeout", message="slow", backtrace=["a:1", "b:2"])
    client.fail("jid-00000002", KeyError("k"), message="override")
    client.fail("jid-00000003")
    first, second, third = (sent_json(line) for line in fake.commands("FAIL"))
    assert first == {
        "jid": "jid-00000001",
        "errtype": "Timeout",
        "message": "slow",
        "backtrace": ["a:1", "b:2"],
    }
    assert second == {"jid": "jid-00000002", "errtype": "KeyError", "message": "override"}
    assert third == {"jid": "jid-00000003", "errtype": "unknown", "message": ""}
    with pytest.raises(ValidationError, match="backtrace"):
        client.fail("jid-00000004", errtype="E", backtrace="not a list")


def test_fail_unknown_job(client: Client, fake: FakeFaktory) -> None:
    fake.script("FAIL", b"-ERR Job not found jid-00000009\r\n")
    with pytest.raises(ServerError) as info:
        client.fail("jid-00000009", errtype="E")
    assert info.value.message == "Job not found jid-00000009"


def test_format_backtrace_of_an_unraised_exception() -> None:
    assert format_exception_backtrace(ValueError("never raised")) == []


def test_beat(fake: FakeFaktory) -> None:
    fake.script("BEAT", b'$17\r\n{"state":"quiet"}\r\n', b'$21\r\n{"state":"terminate"}\r\n')
    with Client(fake.url, wid="worker-1", labels=["x"]) as client:
        assert client.beat() == "quiet"
        assert client.beat(current_state="quiet", rss_kb=2048) == "terminate"
        assert client.beat() == "OK"
    first, second, _ = (sent_json(line) for line in fake.commands("BEAT"))
    assert first == {"wid": "worker-1"}
    assert second == {"wid": "worker-1", "current_state": "quiet", "rss_kb": 2048}
    assert sent_json(fake.commands("HELLO")[0])["wid"] == "worker-1"


def test_beat_errors(client: Client, fake: FakeFaktory) -> None:
    with pytest.raises(ConfigurationError, match="wid"):
        client.beat()
    with Client(fake.url, wid="w") as worker:
        with pytest.raises(ValidationError, match="current_state"):
            worker.beat(current_state="sleepy")
        fake.script("BEAT", b"-ERR unknown worker w\r\n", b'$16\r\n{"state":"nap"}\r\n')
        with pytest.raises(ServerError, match="unknown worker w"):
            worker.beat()
        with pytest.raises(RemoteProtocolError, match="BEAT"):
            worker.beat()


def test_bad_wid_and_labels(fake: FakeFaktory) -> None:
    with pytest.raises(ConfigurationError, match="wid"):
        Client(fake.url, wid="has space")
    with pytest.raises(ConfigurationError, match="labels"):
        Client(fake.url, labels="abc")
    with pytest.raises(ConfigurationError, match="pool_size"):
        Client(fake.url, pool_size=0)


# -- server commands --------------------------------------------------------------------


def test_info(client: Client, fake: FakeFaktory) -> None:
    client.push({"jobtype": "A", "queue": "q1"})
    info = client.info()
    assert info.faktory.queues == {"q1": 1}
    assert info.faktory.total_processed == 7
    assert info.server.faktory_version == "1.10.0"
    assert info.raw["faktory"]["sets"]["dead"] == 0


def test_flush(client: Client, fake: FakeFaktory) -> None:
    client.push({"jobtype": "A"})
    client.flush()
    assert fake.commands("FLUSH") == ["FLUSH"]
    assert client.info().faktory.queues == {}


def test_queue_commands(client: Client, fake: FakeFaktory) -> None:
    client.queue_pause("a", "b")
    client.queue_resume("*")
    client.queue_remove("c")
    assert client.queue_latency("a", "b") == {"a": 1.5, "b": 1.5}
    assert fake.commands("QUEUE") == [
        "QUEUE PAUSE a b",
        "QUEUE RESUME *",
        "QUEUE REMOVE c",
        "QUEUE LATENCY a b",
    ]
    with pytest.raises(ValidationError):
        client.queue_latency("*")
    with pytest.raises(ValidationError):
        client.queue_pause()


def test_mutations(client: Client, fake: FakeFaktory) -> None:
    client.retries.of_type("send email").requeue()
    client.dead.with_jids("jid-1", "jid-2").discard()
    client.scheduled.matching("*uid:12345*").kill()
    client.dead.clear()
    narrowed = client.retries.of_type("A")
    assert client.retries.jobtype is None  # each filter returns a new Mutation
    assert narrowed.with_jids("x").jobtype == "A"
    lines = fake.commands("MUTATE")
    assert lines == [
        'MUTATE {"cmd":"requeue","target":"retries","filter":{"jobtype":"send\\u0020email"}}',
        'MUTATE {"cmd":"discard","target":"dead","filter":{"jids":["jid-1","jid-2"]}}',
        'MUTATE {"cmd":"kill","target":"scheduled","filter":{"regexp":"*uid:12345*"}}',
        'MUTATE {"cmd":"clear","target":"dead"}',
    ]
    assert sent_json(lines[0])["filter"]["jobtype"] == "send email"
    assert "of_type='A'" in repr(narrowed)


def test_mutation_errors(client: Client, fake: FakeFaktory) -> None:
    with pytest.raises(ValidationError):
        client.dead.of_type("")
    with pytest.raises(ValidationError):
        client.dead.with_jids()
    with pytest.raises(ValidationError):
        client.dead.matching("")
    fake.script("MUTATE", b"-ERR invalid target for mutation command\r\n")
    with pytest.raises(ServerError, match="invalid target"):
        client.dead.kill()


def test_send_raw_commands(client: Client, fake: FakeFaktory) -> None:
    assert client.send("ACK", '{"jid":"jid-00000001"}') == "OK"
    assert client.send('ACK {"jid":"jid-00000002"}') == "OK"
    assert client.send(b"FETCH nothing\r\n") is None
    info = client.send("INFO")
    assert info is not None
    assert json.loads(info)["server"]["faktory_version"] == "1.10.0"
    with pytest.raises(ServerError, match="unknown command NOSUCH") as exc_info:
        client.send("NOSUCH cmd")
    assert exc_info.value.command == "NOSUCH"
    with pytest.raises(LocalProtocolError):
        client.send("ACK", "two\nlines")
    assert client.send("END") is None
    fake.wait_for(lambda: fake.sessions[0].ended)
    assert client.send("ACK", '{"jid":"jid-00000003"}') == "OK"


def test_send_is_never_retried(client: Client, fake: FakeFaktory) -> None:
    client.connect()
    fake.script("INFO", CLOSE)
    with pytest.raises(ReadError):
        client.send("INFO")
    assert fake.commands("INFO") == ["INFO"]


# -- lifecycle ---------------------------------------------------------------------------


def test_connect_proves_the_server_is_reachable(fake: FakeFaktory) -> None:
    client = Client(fake.url)
    assert client.connect() is client
    assert client.pool.idle == 1
    assert len(fake.sessions) == 1
    client.close()
    fake.wait_for(lambda: fake.sessions[0].ended)
    assert client.pool.idle == 0


def test_connect_to_nothing() -> None:
    with pytest.raises(ConnectError):
        Client(closed_port_url()).connect()


def test_context_manager_ends_connections_and_client_stays_usable(fake: FakeFaktory) -> None:
    with Client(fake.url) as client:
        client.push({"jobtype": "A"})
    fake.wait_for(lambda: fake.sessions[0].ended)
    client.push({"jobtype": "A"})
    assert len(fake.sessions) == 2
    client.close()


def test_repr(client: Client) -> None:
    client.connect()
    assert "idle=1 in_use=0 size=10" in repr(client)


# -- retries -----------------------------------------------------------------------------


def test_push_is_retried_once_on_a_fresh_connection_with_the_same_jid(
    client: Client, fake: FakeFaktory
) -> None:
    client.connect()
    fake.script("PUSH", CLOSE)
    jid = client.push({"jobtype": "A"})
    pushes = [sent_json(line)["jid"] for line in fake.commands("PUSH")]
    assert pushes == [jid, jid]
    assert len(fake.sessions) == 2


def test_push_is_retried_only_once(client: Client, fake: FakeFaktory) -> None:
    fake.script("PUSH", CLOSE, CLOSE)
    with pytest.raises(ReadError):
        client.push({"jobtype": "A"})
    assert len(fake.commands("PUSH")) == 2


def test_no_retry_after_part_of_a_reply(client: Client, fake: FakeFaktory) -> None:
    fake.script("PUSH", (b"+O", CLOSE))
    with pytest.raises(ReadError):
        client.push({"jobtype": "A"})
    assert len(fake.commands("PUSH")) == 1


def test_no_retry_after_a_timeout(fake: FakeFaktory) -> None:
    fake.script("PUSH", SILENT)
    with Client(fake.url, timeout=0.3) as client, pytest.raises(ReadTimeout):
        client.push({"jobtype": "A"})
    assert len(fake.commands("PUSH")) == 1


def test_fetch_is_never_retried(client: Client, fake: FakeFaktory) -> None:
    fake.script("FETCH", CLOSE)
    with pytest.raises(ReadError):
        client.fetch("q")
    assert fake.commands("FETCH") == ["FETCH q"]


def test_fail_is_never_retried(client: Client, fake: FakeFaktory) -> None:
    fake.script("FAIL", CLOSE)
    with pytest.raises(ReadError):
        client.fail("jid-00000001", errtype="E")
    assert len(fake.commands("FAIL")) == 1


@pytest.mark.parametrize(
    ("verb", "call"),
    [
        ("ACK", lambda c: c.ack("jid-00000001")),
        ("INFO", lambda c: c.info()),
        ("FLUSH", lambda c: c.flush()),
        ("QUEUE", lambda c: c.queue_pause("q")),
        ("MUTATE", lambda c: c.dead.clear()),
        ("PUSHB", lambda c: c.push_bulk([{"jobtype": "A"}])),
    ],
)
def test_idempotent_commands_are_retried(
    client: Client, fake: FakeFaktory, verb: str, call: Any
) -> None:
    fake.script(verb, CLOSE)
    call(client)
    assert len(fake.commands(verb)) == 2


def test_authentication_error_is_raised_at_once_never_retried() -> None:
    with FakeFaktory(password="right") as server:
        client = Client(f"tcp://:wrong@127.0.0.1:{server.port}")
        with pytest.raises(AuthenticationError, match="password"):
            client.push({"jobtype": "A"})
        assert len(server.commands("HELLO")) == 1
        with pytest.raises(AuthenticationError):
            client.info()
        assert len(server.commands("HELLO")) == 2
        assert client.pool.in_use == 0
        client.close()


def test_password_from_the_url_works() -> None:
    with FakeFaktory(password="right") as server, Client(server.url) as client:
        client.push({"jobtype": "A"})
        assert len(server.commands("PUSH")) == 1


def test_server_restart_is_invisible_between_calls(client: Client, fake: FakeFaktory) -> None:
    client.push({"jobtype": "A"})
    fake.drop_connections()
    client.push({"jobtype": "A", "queue": "q"})
    assert client.fetch("q") is not None
    assert len(fake.commands("PUSH")) >= 2
    assert len(fake.sessions) == 2


def wait_readable(fileno: int, timeout: float = 5.0) -> None:
    """Wait until the server's FIN has reached our end of the socket."""
    ready, _, _ = select.select([fileno], [], [], timeout)
    assert ready, "the server's close never arrived"


def test_idle_connection_closed_by_the_server_is_replaced_before_a_fetch(
    client: Client, fake: FakeFaktory
) -> None:
    # FETCH is never retried, so only the pool's stale check can make this work.
    conn = client.pool.acquire()
    fileno = conn._sock.fileno()
    client.pool.release(conn)
    fake.queues["q"].append({"jid": "jid-00000001", "jobtype": "A", "args": []})
    fake.drop_connections()
    wait_readable(fileno)
    job = client.fetch("q")
    assert job is not None
    assert len(fake.sessions) == 2
    assert fake.commands("FETCH") == ["FETCH q"]


# -- pool --------------------------------------------------------------------------------


def test_pool_timeout(fake: FakeFaktory) -> None:
    with Client(fake.url, pool_size=1, pool_timeout=0.2) as client:
        with client.pool.connection(), pytest.raises(PoolTimeout, match="all 1 are in use"):
            client.push({"jobtype": "A"})
        client.push({"jobtype": "A"})


def test_waiting_borrower_gets_the_released_connection(fake: FakeFaktory) -> None:
    with Client(fake.url, pool_size=1, pool_timeout=10) as client:
        conn = client.pool.acquire()
        done = threading.Event()
        errors: list[BaseException] = []

        def push() -> None:
            try:
                client.push({"jobtype": "A"})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=push)
        thread.start()
        # The push is blocked in acquire (not merely not started yet) when the
        # connection comes back, so this is a handover.
        wait_until(lambda: client.pool.waiting == 1, "the push to wait for a connection")
        assert not done.is_set()
        client.pool.release(conn)
        assert done.wait(10)
        thread.join(10)
        assert errors == []
        assert len(fake.sessions) == 1


def test_server_error_keeps_and_transport_error_discards(fake: FakeFaktory) -> None:
    with Client(fake.url) as client:
        pool = client.pool
        with pytest.raises(ServerError), pool.connection():
            raise ServerError("ERR", "nope")
        assert pool.idle == 1
        with pytest.raises(ReadError), pool.connection():
            raise ReadError("gone")
        assert pool.idle == 0
        with pytest.raises(KeyError), pool.connection():
            raise KeyError("unrelated")
        assert pool.idle == 1
        assert pool.in_use == 0


def test_threads_share_the_pool(fake: FakeFaktory) -> None:
    with Client(fake.url, pool_size=3) as client:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(25):
                    client.push({"jobtype": "A"})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert len(fake.commands("PUSH")) == 200
        assert len(set(fake.commands("PUSH"))) == 200
        assert len(fake.sessions) <= 3
        assert client.pool.in_use == 0


def test_fresh_acquire_replaces_an_idle_connection_when_full(fake: FakeFaktory) -> None:
    with Client(fake.url, pool_size=1) as client:
        client.connect()
        conn = client.pool.acquire(fresh=True)
        assert len(fake.sessions) == 2
        client.pool.release(conn)
        assert client.pool.idle == 1
        fake.wait_for(lambda: fake.sessions[0].ended)


def test_settings_host_port_and_hostname_options(fake: FakeFaktory) -> None:
    settings = resolve_settings(host="127.0.0.1", port=fake.port, timeout=3)
    with Client(settings=settings, hostname="builder-1") as client:
        assert client.settings is settings
        client.push({"jobtype": "A"})
    with Client(host="127.0.0.1", port=fake.port) as client:
        client.push({"jobtype": "A"})
    hellos = [sent_json(line) for line in fake.commands("HELLO")]
    assert hellos[0]["hostname"] == "builder-1"
    assert len(fake.commands("PUSH")) == 2


def test_job_builder_refuses_an_unknown_keyword_and_keeps_enterprise_fields() -> None:
    from kaffi.client.job import Job

    with pytest.raises(TypeError, match="Job\\(\\) got an unexpected keyword argument 'unique'"):
        Job("send", unique=5)
    job = Job("send", 1, unique_for=10, expires_in=5, track=True)
    assert (job.unique_for, job.expires_in, job.track, job.unique_until) == (10, 5, True, None)
    custom = job.payload().custom
    assert custom is not None
    assert custom["unique_for"] == 10
    assert custom["track"] == 1
    assert "expires_at" in custom
    job.track = None
    assert "track" not in (job.payload().custom or {})
