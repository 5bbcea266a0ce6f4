"""Batches in ``kaffi server --enterprise``, on the wire: a real embedded server, real
sockets, raw BATCH/PUSH/FETCH/ACK/FAIL lines (the contract in
``docs/embedded-server.md``), time moved with the server's clock, never by sleeping.
Also what ``--data`` keeps across a restart: locks, progress records, batches and the
expired counter."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from kaffi import App, Client, current_job
from kaffi.errors import ServerError
from kaffi.protocol.models import parse_rfc3339
from kaffi.server import EmbeddedServer
from kaffi.server.batches import FINISHED_TTL, UNCOMMITTED_TTL, UNFINISHED_TTL
from tests.support import embedded_server, running, wait_until

#: The callbacks of most batches here, in a queue of their own.
COMPLETE = {"jobtype": "done", "queue": "cb", "args": ["c"]}
SUCCESS = {"jobtype": "ok", "queue": "cb", "args": ["s"]}


def rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


class Wire:
    """Raw commands on one client connection, decoded."""

    def __init__(self, client: Client, server: EmbeddedServer) -> None:
        self.client = client
        self.server = server
        self._jids = 0

    def send(self, verb: str, arg: str) -> str | None:
        return self.client.send(verb, arg)

    def error(self, verb: str, arg: str) -> str:
        with pytest.raises(ServerError) as caught:
            self.send(verb, arg)
        return f"{caught.value.code} {caught.value.message}"

    def new(self, **doc: Any) -> str:
        doc.setdefault("complete", COMPLETE)
        doc.setdefault("success", SUCCESS)
        bid = self.send("BATCH", "NEW " + json.dumps(doc))
        assert bid is not None
        return bid

    def status(self, bid: str) -> dict[str, Any]:
        reply = self.send("BATCH", f"STATUS {bid}")
        assert reply is not None
        doc: dict[str, Any] = json.loads(reply)
        return doc

    def counts(self, bid: str) -> tuple[int, int, int, str, str]:
        st = self.status(bid)
        return (st["total"], st["pending"], st["failed"], st["complete_st"], st["success_st"])

    def commit(self, bid: str) -> None:
        assert self.send("BATCH", f"COMMIT {bid}") == "OK"

    def push(self, bid: str | None = None, queue: str = "default", **fields: Any) -> str:
        self._jids += 1
        jid = f"job-{self._jids:020d}"
        custom = dict(fields.pop("custom", {}))
        if bid is not None:
            custom["bid"] = bid
        job = {"jid": jid, "jobtype": "work", "args": [self._jids], "queue": queue, **fields}
        if custom:
            job["custom"] = custom
        assert self.send("PUSH", json.dumps(job)) == "OK"
        return jid

    def fetch(self, queue: str = "default") -> dict[str, Any] | None:
        reply = self.send("FETCH", queue)
        if reply is None:
            return None
        job: dict[str, Any] = json.loads(reply)
        return job

    def run(self, queue: str = "default") -> dict[str, Any]:
        """Fetch one job and ACK it."""
        job = self.fetch(queue)
        assert job is not None, f"nothing in {queue}"
        self.ack(job["jid"])
        return job

    def ack(self, jid: str) -> None:
        assert self.send("ACK", json.dumps({"jid": jid})) == "OK"

    def fail(self, jid: str) -> None:
        doc = {"jid": jid, "errtype": "Boom", "message": "it broke"}
        assert self.send("FAIL", json.dumps(doc)) == "OK"

    def queued(self, queue: str) -> int:
        sizes: dict[str, int] = self.client.info().raw["faktory"]["queues"]
        return sizes.get(queue, 0)


@pytest.fixture
def wire(faktory_enterprise_server: EmbeddedServer) -> Iterator[Wire]:
    with Client(faktory_enterprise_server.url) as client:
        yield Wire(client, faktory_enterprise_server)


# -- the BATCH commands ------------------------------------------------------------------------


def test_new_open_commit_status(wire: Wire) -> None:
    bid = wire.new(description="nightly import")
    assert bid.startswith("b-")
    assert len(bid) == 16
    assert wire.new() != bid
    st = wire.status(bid)
    assert list(st) == [
        "bid",
        "description",
        "created_at",
        "total",
        "pending",
        "failed",
        "complete_st",
        "success_st",
    ]
    assert st["bid"] == bid
    assert st["description"] == "nightly import"
    created = parse_rfc3339(st["created_at"])
    assert abs((created - datetime.now(timezone.utc)).total_seconds()) < 60
    assert wire.counts(bid) == (0, 0, 0, "", "")
    assert wire.send("BATCH", f"OPEN {bid}") == bid
    wire.push(bid)
    wire.commit(bid)
    wire.commit(bid)  # a second COMMIT is accepted and changes nothing
    assert wire.counts(bid) == (1, 1, 0, "", "")
    # Without a description and with an empty bid (Go always sends one) the key is absent.
    plain = wire.new(bid="", description="")
    assert "description" not in wire.status(plain)
    assert "parent_bid" not in wire.status(plain)


def test_errors_name_what_was_wrong_and_the_connection_goes_on(wire: Wire) -> None:
    # "no such batch <bid>", lowercase as Enterprise 1.9.2+: faktory_worker_go's context_test
    # matches it and faktory-rs turns it into None for OPEN (ENTERPRISE.md section 1).
    cases = {
        "STATUS b-nope": "ERR no such batch b-nope",
        "OPEN b-nope": "ERR no such batch b-nope",
        "COMMIT b-nope": "ERR no such batch b-nope",
        "STATUS": "ERR BATCH STATUS needs a batch id",
        "NEW {": "ERR invalid JSON: unexpected end of JSON input",
        "NEW []": "ERR BATCH NEW needs a JSON object",
        'NEW {"description":"x"}': "ERR batch requires a success or complete callback",
        'NEW {"success":null,"complete":null}': "ERR batch requires a success or complete callback",
        'NEW {"success":{"jobtype":"a"},"parent_bid":"b-gone"}': "ERR no such batch b-gone",
        'NEW {"success":{"jobtype":"a"},"bid":"b-mine"}': (
            "ERR BATCH NEW cannot choose its bid: the server assigns it"
        ),
        'NEW {"success":{"jobtype":"a"},"description":5}': (
            "ERR invalid BATCH NEW: description must be a string"
        ),
        'NEW {"success":{"args":[]}}': (
            "ERR invalid success callback: jobs must have a jobtype parameter"
        ),
        'NEW {"complete":{"jobtype":"a","queue":"no spaces"}}': (
            'ERR invalid complete callback: cannot get "no spaces" queue: '
            "queue names must match \\A[a-zA-Z0-9._-]+\\z"
        ),
        'NEW {"complete":[1]}': "ERR invalid complete callback: a job object is required",
        "DROP b-x": "ERR unknown batch subcommand DROP",
    }
    for line, expected in cases.items():
        assert wire.error("BATCH", line) == expected, line
    assert wire.error("BATCH", "") == "ERR BATCH needs a subcommand: NEW, OPEN, COMMIT or STATUS"
    # faktory_worker_go's and _ruby's tests run their Enterprise tests on "Enterprise" here.
    assert wire.client.info().raw["server"]["description"].endswith("Enterprise-compatible server")


def test_a_job_of_an_unknown_batch_is_refused(wire: Wire) -> None:
    job = {"jid": "j" * 24, "jobtype": "work", "args": [], "custom": {"bid": "b-unknown"}}
    assert wire.error("PUSH", json.dumps(job)) == "ERR no such batch b-unknown"
    bid = wire.new()
    good = {"jid": "k" * 24, "jobtype": "work", "args": [], "custom": {"bid": bid}}
    assert json.loads(wire.send("PUSHB", json.dumps([job, good])) or "") == {
        "j" * 24: "no such batch b-unknown"
    }
    assert wire.counts(bid) == (1, 1, 0, "", "")
    assert wire.queued("default") == 1


# -- callbacks -----------------------------------------------------------------------------------


def test_callbacks_fire_after_every_ack_complete_first(wire: Wire) -> None:
    bid = wire.new()
    jobs = [wire.push(bid) for _ in range(2)]
    wire.commit(bid)
    assert wire.counts(bid) == (2, 2, 0, "", "")
    assert wire.run()["jid"] == jobs[0]
    assert wire.counts(bid) == (2, 1, 0, "", "")
    assert wire.queued("cb") == 0
    wire.run()
    assert wire.counts(bid) == (2, 0, 0, "1", "")
    complete = wire.fetch("cb")
    assert complete is not None
    assert complete["jobtype"] == "done"
    assert complete["args"] == ["c"]
    assert complete["queue"] == "cb"
    assert complete["custom"] == {"_bid": bid}
    assert len(complete["jid"]) == 24
    assert complete["retry"] == 25
    # success waits for the complete callback's ACK.
    assert wire.queued("cb") == 0
    wire.ack(complete["jid"])
    assert wire.counts(bid) == (2, 0, 0, "2", "1")
    success = wire.run("cb")
    assert success["jobtype"] == "ok"
    assert success["custom"] == {"_bid": bid}
    assert wire.counts(bid) == (2, 0, 0, "2", "2")
    assert wire.queued("cb") == 0


def test_callback_fields_jid_custom_and_a_single_callback(wire: Wire) -> None:
    callback = {
        "jid": "cbjid-000000000000000000",
        "jobtype": "report",
        "args": [1, "x"],
        "custom": {"bid": "b-ignored", "tenant": 7},
        "retry": 3,
    }
    bid = wire.new(success=callback, complete=None)
    wire.push(bid)
    wire.commit(bid)
    wire.run()
    # No complete callback: success is due at once; it keeps its own custom keys, jid and
    # retry, goes to "default", and carries _bid instead of bid.
    assert wire.counts(bid) == (1, 0, 0, "", "1")
    success = wire.run()
    assert success["jid"] == "cbjid-000000000000000000"
    assert success["custom"] == {"_bid": bid, "tenant": 7}
    assert success["retry"] == 3
    assert success["args"] == [1, "x"]
    assert wire.counts(bid) == (1, 0, 0, "", "2")


def test_callbacks_sharing_a_jid_both_finish(wire: Wire) -> None:
    same = "samejid-0000000000000000"
    bid = wire.new(complete={**COMPLETE, "jid": same}, success={**SUCCESS, "jid": same})
    wire.commit(bid)
    assert wire.run("cb")["jobtype"] == "done"
    assert wire.counts(bid) == (0, 0, 0, "2", "1")
    assert wire.run("cb")["jobtype"] == "ok"
    assert wire.counts(bid) == (0, 0, 0, "2", "2")


def test_a_callback_refused_as_a_duplicate_is_logged_and_not_retried(
    wire: Wire, caplog: pytest.LogCaptureFixture
) -> None:
    unique_cb = {"jobtype": "report", "args": [], "custom": {"unique_for": 600}}
    holder = {"jid": "holder" * 4, **unique_cb}
    assert wire.send("PUSH", json.dumps(holder)) == "OK"
    bid = wire.new(complete=unique_cb, success=None)
    with caplog.at_level("WARNING", logger="kaffi.server"):
        wire.commit(bid)
        # The server logs on its own thread: wait for the line, never sleep.
        wait_until(lambda: "not enqueued: NOTUNIQUE" in caplog.text, "the warning")
    assert f"batch {bid}: callback" in caplog.text
    assert wire.counts(bid) == (0, 0, 0, "1", "")
    assert wire.queued("default") == 1  # only the lock holder
    wire.commit(bid)
    assert wire.queued("default") == 1


def test_a_dead_job_completes_the_batch_but_success_never_fires(wire: Wire) -> None:
    bid = wire.new()
    doomed = wire.push(bid, retry=0)
    wire.push(bid)
    wire.commit(bid)
    job = wire.fetch()
    assert job is not None
    assert job["jid"] == doomed
    wire.fail(doomed)
    assert wire.counts(bid) == (2, 1, 1, "", "")
    wire.run()
    assert wire.counts(bid) == (2, 0, 1, "1", "")
    wire.run("cb")
    assert wire.counts(bid) == (2, 0, 1, "2", "")
    assert wire.queued("cb") == 0


def test_a_job_that_dies_after_retries_and_is_requeued_from_the_dead_set(wire: Wire) -> None:
    bid = wire.new()
    jid = wire.push(bid, retry=1)
    wire.commit(bid)
    for _ in range(2):
        assert wire.fetch() is not None
        wire.fail(jid)
        wire.server.advance_clock(3600)
    assert wire.client.info().raw["faktory"]["sets"]["dead"] == 1
    assert wire.counts(bid) == (1, 0, 1, "1", "")
    wire.run("cb")
    assert wire.counts(bid) == (1, 0, 1, "2", "")
    # Requeued from the Dead set and ACKed, the job lets the batch succeed.
    requeue = {"cmd": "requeue", "target": "dead", "filter": {"jids": [jid]}}
    assert wire.send("MUTATE", json.dumps(requeue, separators=(",", ":"))) == "OK"
    assert wire.run()["jid"] == jid
    assert wire.counts(bid) == (1, 0, 0, "2", "1")


def test_success_after_a_failed_job_succeeds_on_retry(wire: Wire) -> None:
    bid = wire.new()
    jid = wire.push(bid, retry=5)
    wire.commit(bid)
    job = wire.fetch()
    assert job is not None
    wire.fail(jid)
    # Every job has run once: complete is due; the failure holds success back.
    assert wire.counts(bid) == (1, 0, 1, "1", "")
    wire.run("cb")
    assert wire.counts(bid) == (1, 0, 1, "2", "")
    # The retry fails again: counted once.
    wire.server.advance_clock(3600)
    assert wire.fetch() is not None
    wire.fail(jid)
    assert wire.counts(bid) == (1, 0, 1, "2", "")
    wire.server.advance_clock(3600)
    assert wire.run()["jid"] == jid
    assert wire.counts(bid) == (1, 0, 0, "2", "1")
    assert wire.run("cb")["jobtype"] == "ok"
    assert wire.counts(bid) == (1, 0, 0, "2", "2")


def test_a_failing_callback_stays_enqueued_and_retries(wire: Wire) -> None:
    bid = wire.new()
    wire.commit(bid)
    complete = wire.fetch("cb")
    assert complete is not None
    wire.fail(complete["jid"])
    assert wire.counts(bid) == (0, 0, 0, "1", "")
    wire.server.advance_clock(3600)
    assert wire.run("cb")["jid"] == complete["jid"]
    assert wire.counts(bid) == (0, 0, 0, "2", "1")


def test_an_empty_batch_fires_at_commit(wire: Wire) -> None:
    bid = wire.new()
    assert wire.queued("cb") == 0
    wire.commit(bid)
    assert wire.counts(bid) == (0, 0, 0, "1", "")
    assert wire.run("cb")["jobtype"] == "done"
    assert wire.run("cb")["jobtype"] == "ok"
    assert wire.counts(bid) == (0, 0, 0, "2", "2")


def test_open_after_commit_adds_jobs_the_callbacks_wait_for(wire: Wire) -> None:
    bid = wire.new()
    first = wire.push(bid)
    wire.commit(bid)
    job = wire.fetch()
    assert job is not None
    # Inside the running job: OPEN, add a follow-up (no second COMMIT needed).
    assert wire.send("BATCH", f"OPEN {bid}") == bid
    follow_up = wire.push(bid)
    wire.ack(first)
    assert wire.counts(bid) == (2, 1, 0, "", "")
    assert wire.run()["jid"] == follow_up
    assert wire.counts(bid) == (2, 0, 0, "1", "")
    wire.commit(bid)  # a COMMIT after OPEN is fine and fires nothing twice
    wire.run("cb")
    wire.run("cb")
    wire.commit(bid)
    assert wire.queued("cb") == 0
    assert wire.counts(bid) == (2, 0, 0, "2", "2")


def test_scheduled_jobs_join_and_count_when_they_run(wire: Wire) -> None:
    bid = wire.new(complete=None)
    at = rfc3339(datetime.now(timezone.utc) + timedelta(seconds=600))
    job = {"jid": "sched" * 5, "jobtype": "work", "args": [], "at": at, "custom": {"bid": bid}}
    job["created_at"] = rfc3339(datetime.now(timezone.utc))
    # The same scheduled job sent twice (a resent PUSH) is stored, and counted, once.
    for _ in range(2):
        assert wire.send("PUSH", json.dumps(job)) == "OK"
    wire.commit(bid)
    assert wire.counts(bid) == (1, 1, 0, "", "")
    assert wire.client.info().raw["faktory"]["sets"]["scheduled"] == 1
    wire.server.advance_clock(601)
    wire.run()
    assert wire.counts(bid) == (1, 0, 0, "", "1")


def test_an_expired_reservation_counts_as_a_failure(wire: Wire) -> None:
    bid = wire.new()
    wire.push(bid, reserve_for=60)
    wire.commit(bid)
    assert wire.fetch() is not None  # the worker dies: no ACK
    wire.server.advance_clock(61)
    assert wire.counts(bid) == (1, 0, 1, "1", "")


def test_a_job_dropped_as_expired_counts_as_a_failure(wire: Wire) -> None:
    bid = wire.new()
    past = rfc3339(datetime.now(timezone.utc) - timedelta(seconds=5))
    wire.push(bid, custom={"expires_at": past})
    wire.commit(bid)
    assert wire.fetch() is None
    assert wire.counts(bid) == (1, 0, 1, "1", "")


def test_a_worker_runs_the_batch_and_its_callbacks_after_a_retry(
    faktory_enterprise_server: EmbeddedServer,
) -> None:
    app = App(faktory_enterprise_server.url)
    ran: list[tuple[Any, ...]] = []
    first_try = {1}

    @app.task(name="work", retry=3)
    def work(n: int) -> None:
        if n in first_try:
            first_try.discard(n)
            raise RuntimeError("the first try fails")
        ran.append(("work", n))

    @app.task(name="finished")
    def finished(kind: str) -> None:
        custom = current_job().custom or {}
        ran.append((kind, custom.get("_bid"), custom.get("bid")))

    callbacks = {
        "complete": {"jobtype": "finished", "args": ["complete"]},
        "success": {"jobtype": "finished", "args": ["success"]},
    }
    try:
        bid = app.client.send("BATCH", "NEW " + json.dumps(callbacks))
        assert bid is not None
        for n in range(3):
            work.options(custom={"bid": bid}).delay(n)
        assert app.client.send("BATCH", f"COMMIT {bid}") == "OK"
        with running(app.worker(concurrency=1)):
            wait_until(lambda: ("complete", bid, None) in ran, "the complete callback")
            # Job 1 waits to retry: no success yet.
            assert sorted(ran[:2]) == [("work", 0), ("work", 2)]
            assert ran[2:] == [("complete", bid, None)]
            faktory_enterprise_server.advance_clock(3600)
            wait_until(lambda: len(ran) == 5, lambda: f"the retry and success, ran {ran}")
        assert ran[3:] == [("work", 1), ("success", bid, None)]
        status = json.loads(app.client.send("BATCH", f"STATUS {bid}") or "")
        assert (status["pending"], status["failed"], status["success_st"]) == (0, 0, "2")
    finally:
        app.close()


# -- nesting -------------------------------------------------------------------------------------


def test_a_parent_waits_for_its_child_batches_callbacks(wire: Wire) -> None:
    parent = wire.new(
        complete={**COMPLETE, "args": ["parent"]}, success={**SUCCESS, "args": ["parent"]}
    )
    child = wire.new(parent_bid=parent)
    assert wire.status(child)["parent_bid"] == parent
    wire.push(parent)
    wire.push(child)
    wire.commit(child)
    wire.commit(parent)
    order: list[tuple[str, list[Any], dict[str, Any]]] = []
    while True:
        job = wire.fetch("default") or wire.fetch("cb")
        if job is None:
            break
        order.append((job["jobtype"], job["args"], job.get("custom") or {}))
        wire.ack(job["jid"])
    callbacks = [(jobtype, args) for jobtype, args, _ in order if jobtype != "work"]
    assert callbacks == [
        ("done", ["c"]),
        ("ok", ["s"]),
        ("done", ["parent"]),
        ("ok", ["parent"]),
    ]
    child_custom = [custom for jobtype, args, custom in order if args == ["c"]]
    assert child_custom == [{"_bid": child, "_pbid": parent}]
    parent_custom = [custom for _, args, custom in order if args == ["parent"]]
    assert parent_custom == [{"_bid": parent}, {"_bid": parent}]
    assert wire.counts(parent) == (1, 0, 0, "2", "2")
    assert wire.counts(child) == (1, 0, 0, "2", "2")


def test_a_child_with_a_dead_job_lets_the_parent_complete_not_succeed(wire: Wire) -> None:
    parent = wire.new()
    child = wire.new(parent_bid=parent, success=None)
    wire.commit(parent)
    assert wire.counts(parent) == (0, 0, 0, "", "")  # the uncommitted child holds it
    doomed = wire.push(child, retry=0)
    wire.commit(child)
    assert wire.fetch() is not None
    wire.fail(doomed)
    assert wire.counts(child) == (1, 0, 1, "1", "")
    wire.run("cb")
    assert wire.counts(parent) == (0, 0, 0, "1", "")
    wire.run("cb")
    assert wire.counts(parent) == (0, 0, 0, "2", "")
    assert wire.queued("cb") == 0


# -- expiry, retention, FLUSH --------------------------------------------------------------------


def test_an_uncommitted_batch_expires_30_minutes_after_new_or_open(wire: Wire) -> None:
    bid = wire.new()
    wire.push(bid)
    wire.server.advance_clock(UNCOMMITTED_TTL - 60)
    assert wire.send("BATCH", f"OPEN {bid}") == bid
    wire.server.advance_clock(UNCOMMITTED_TTL - 60)
    assert wire.counts(bid) == (1, 1, 0, "", "")
    wire.server.advance_clock(61)
    assert wire.error("BATCH", f"STATUS {bid}") == f"ERR no such batch {bid}"
    job = {"jid": "late" * 6, "jobtype": "work", "args": [], "custom": {"bid": bid}}
    assert wire.error("PUSH", json.dumps(job)) == f"ERR no such batch {bid}"
    # Its job still runs, with no callbacks.
    wire.run()
    assert wire.queued("cb") == 0


def test_an_expired_child_no_longer_holds_its_parent(wire: Wire) -> None:
    parent = wire.new()
    wire.new(parent_bid=parent)
    wire.commit(parent)
    assert wire.counts(parent) == (0, 0, 0, "", "")
    wire.server.advance_clock(UNCOMMITTED_TTL + 1)
    assert wire.counts(parent) == (0, 0, 0, "1", "")


def test_committed_batches_stay_until_30_minutes_after_their_callbacks(wire: Wire) -> None:
    waiting = wire.new()
    wire.push(waiting)
    wire.commit(waiting)
    done = wire.new()
    wire.commit(done)
    wire.run("cb")
    wire.run("cb")
    wire.server.advance_clock(FINISHED_TTL - 1)
    assert wire.counts(done) == (0, 0, 0, "2", "2")
    wire.server.advance_clock(2)
    assert wire.error("BATCH", f"STATUS {done}") == f"ERR no such batch {done}"
    assert wire.counts(waiting) == (1, 1, 0, "", "")


def test_a_batch_that_cannot_finish_stays_180_days(wire: Wire) -> None:
    bid = wire.new()
    jid = wire.push(bid, retry=0)
    wire.commit(bid)
    assert wire.fetch() is not None
    wire.fail(jid)
    wire.run("cb")
    wire.server.advance_clock(FINISHED_TTL + 1)
    assert wire.counts(bid) == (1, 0, 1, "2", "")
    wire.server.advance_clock(UNFINISHED_TTL)
    assert wire.error("BATCH", f"STATUS {bid}") == f"ERR no such batch {bid}"


def test_a_child_batch_is_forgotten_with_its_parent(wire: Wire) -> None:
    parent = wire.new()
    child = wire.new(parent_bid=parent)
    wire.commit(child)
    wire.commit(parent)
    for _ in range(4):
        wire.run("cb")
    assert wire.counts(parent) == (0, 0, 0, "2", "2")
    wire.server.advance_clock(FINISHED_TTL + 1)
    for bid in (parent, child):
        assert wire.error("BATCH", f"STATUS {bid}") == f"ERR no such batch {bid}"


def test_flush_forgets_batches(wire: Wire) -> None:
    bid = wire.new()
    wire.client.flush()
    assert wire.error("BATCH", f"STATUS {bid}") == f"ERR no such batch {bid}"


# -- open-source mode --------------------------------------------------------------------------


def test_oss_mode_refuses_batch_and_ignores_bid(faktory_server: EmbeddedServer) -> None:
    with Client(faktory_server.url) as client:
        wire = Wire(client, faktory_server)
        for line in ("NEW {}", "STATUS b-x", "FOO"):
            assert wire.error("BATCH", line) == (
                "ERR batch subsystem is only available in Faktory Enterprise"
            )
        wire.push("b-unknown")
        assert wire.run()["custom"] == {"bid": "b-unknown"}


# -- --data ---------------------------------------------------------------------------------------


def test_locks_tracks_batches_and_counter_survive_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "ent.sqlite3"
    unique = {
        "jid": "u" * 24,
        "jobtype": "sync",
        "args": [7],
        "queue": "uq",
        "custom": {"unique_for": 600},
    }
    past = rfc3339(datetime.now(timezone.utc) - timedelta(seconds=5))
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        wire = Wire(client, srv)
        assert wire.send("PUSH", json.dumps(unique)) == "OK"
        tracked = wire.push(queue="slow", custom={"track": 1})
        assert wire.send("TRACK", f'SET {{"jid":"{tracked}","percent":40,"desc":"parsing"}}')
        wire.push(queue="gone", custom={"expires_at": past})
        assert wire.fetch("gone") is None
        bid = wire.new(description="kept")
        first = wire.push(bid)
        wire.push(bid)
        wire.commit(bid)
        assert wire.run()["jid"] == first
        open_bid = wire.new()
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        wire = Wire(client, srv)
        duplicate = {**unique, "jid": "v" * 24}
        assert wire.error("PUSH", json.dumps(duplicate)) == "NOTUNIQUE Job not unique"
        progress = client.track_get(tracked)
        assert (progress.state, progress.percent, progress.desc) == ("enqueued", 40, "parsing")
        assert client.info().raw["faktory"]["total_expired"] == 1
        assert wire.status(bid)["description"] == "kept"
        assert wire.counts(bid) == (2, 1, 0, "", "")
        assert wire.counts(open_bid) == (0, 0, 0, "", "")
        wire.run()
        assert wire.counts(bid) == (2, 0, 0, "1", "")
        assert wire.run("cb")["custom"] == {"_bid": bid}
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        wire = Wire(client, srv)
        # The complete callback's ACK was stored, and so was the success it made due.
        assert wire.counts(bid) == (2, 0, 0, "2", "1")
        client.flush()
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        wire = Wire(client, srv)
        assert wire.error("BATCH", f"STATUS {bid}") == f"ERR no such batch {bid}"
        assert wire.send("PUSH", json.dumps(unique)) == "OK"
        assert client.track_get(tracked).state == "unknown"
        assert "total_expired" in client.info().raw["faktory"]
        assert client.info().raw["faktory"]["total_expired"] == 0


def test_a_restart_without_enterprise_leaves_the_records_alone(tmp_path: Path) -> None:
    data = tmp_path / "ent.sqlite3"
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        bid = Wire(client, srv).new()
    with embedded_server(data=data) as srv, Client(srv.url) as client:
        wire = Wire(client, srv)
        assert wire.error("BATCH", f"STATUS {bid}").endswith("only available in Faktory Enterprise")
    with embedded_server(data=data, enterprise=True) as srv, Client(srv.url) as client:
        assert Wire(client, srv).counts(bid) == (0, 0, 0, "", "")
