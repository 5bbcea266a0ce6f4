"""The worker against the embedded server, in this process (a thread runs it)."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

import kaffi
from kaffi.app import App
from kaffi.client.aio import AsyncConnection
from kaffi.protocol.models import Failure, JobPayload
from kaffi.worker import Worker
from tests.support import WAIT, running, start, wait_until

from .conftest import stats


def failed_jobs(app: App, queue: str, count: int = 1) -> list[tuple[JobPayload, Failure]]:
    """Put the failed jobs back in their queue and fetch them, to read their failure
    records (and ACK them, so nothing is left reserved)."""
    wait_until(lambda: stats(app).sets.get("retries", 0) >= count, f"{count} jobs to retry")
    app.client.retries.requeue()
    jobs = []
    for _ in range(count):
        job = app.client.fetch(queue)
        assert job is not None, "a requeued job did not come back"
        app.client.ack(job.jid)
        assert job.failure is not None
        jobs.append((job, job.failure))
    return jobs


def failure_of(app: App, queue: str) -> Failure:
    ((_, failure),) = failed_jobs(app, queue)
    return failure


def test_success_is_acked(app: App) -> None:
    seen: list[int] = []

    @app.task
    def add(a: int, b: int) -> None:
        seen.append(a + b)

    for i in range(5):
        add.delay(i, 1)
    with running(app.worker(concurrency=2)) as worker:
        wait_until(lambda: worker.processed == 5, "five jobs")
        info = stats(app)
    assert sorted(seen) == [1, 2, 3, 4, 5]
    assert worker.failed == 0
    assert info.sets["working"] == 0
    assert info.queues.get("default", 0) == 0
    assert info.sets["retries"] == 0


def test_failure_carries_class_message_and_backtrace(app: App) -> None:
    @app.task(queue="boom", retry=3)
    def explode(word: str) -> None:
        raise ValueError(f"bad {word}")

    explode.delay("thing")
    with running(app.worker(queues=["boom"])) as worker:
        wait_until(lambda: worker.failed == 1, "the failure")
    failure = failure_of(app, "boom")
    assert failure.errtype == "ValueError"
    assert failure.message == "bad thing"
    assert failure.backtrace, "no backtrace was sent"
    assert "in explode" in failure.backtrace[0]
    assert 'raise ValueError(f"bad {word}")' in failure.backtrace[0]


def test_backtrace_length_follows_the_job(app: App) -> None:
    @app.task(queue="bt", retry=3, backtrace=1)
    def explode() -> None:
        raise RuntimeError("x")

    explode.delay()
    with running(app.worker(queues=["bt"])) as worker:
        wait_until(lambda: worker.failed == 1, "the failure")
    failure = failure_of(app, "bt")
    assert failure.backtrace is not None
    assert len(failure.backtrace) == 1


def test_unknown_jobtype_and_bad_args_fail_and_the_worker_goes_on(app: App) -> None:
    done = threading.Event()

    @app.task(queue="mixed")
    def add(a: int, b: int) -> None:
        done.set()

    app.client.push({"jobtype": "no_such_task", "args": [], "queue": "mixed", "retry": 1})
    app.client.push({"jobtype": "add", "args": ["x", "y"], "queue": "mixed", "retry": 1})
    app.client.push({"jobtype": "add", "args": [1], "queue": "mixed", "retry": 1})
    add.options(queue="mixed").delay(1, 2)
    with running(app.worker(queues=["mixed"], concurrency=1)) as worker:
        assert done.wait(WAIT)
        wait_until(lambda: worker.processed == 4, "four jobs")
    assert worker.failed == 3
    failures = {(j.jobtype, len(j.args)): f for j, f in failed_jobs(app, "mixed", 3)}
    unknown = failures["no_such_task", 0]
    assert unknown.errtype == "UnknownJobType"
    assert unknown.message is not None
    assert "no_such_task" in unknown.message
    for key in (("add", 2), ("add", 1)):
        assert failures[key].errtype == "ArgumentsError", failures[key]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("exit_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_in_a_job_fails_it_and_the_worker_keeps_running(
    app: App, kind: str, exit_type: type[BaseException]
) -> None:
    after = threading.Event()

    if kind == "sync":

        @app.task(queue="exit", retry=1)
        def leave() -> None:
            raise exit_type(3)

    else:

        @app.task(queue="exit", retry=1)
        async def leave() -> None:
            raise exit_type(3)

    @app.task(queue="exit")
    def later() -> None:
        after.set()

    leave.delay()
    later.delay()
    with running(app.worker(queues=["exit"], concurrency=1)) as worker:
        assert after.wait(WAIT), "the worker stopped working after the exit"
        wait_until(lambda: worker.processed == 2, "both jobs")
    assert worker.failed == 1
    failure = failure_of(app, "exit")
    assert failure.errtype == exit_type.__name__
    assert failure.message is not None
    assert "cannot stop the worker" in failure.message


def test_async_jobs_run_on_the_loop_and_sync_jobs_in_threads(app: App) -> None:
    where: dict[str, tuple[str, str]] = {}

    @app.task
    def plain(tag: str) -> None:
        where[tag] = (threading.current_thread().name, kaffi.current_job().jid)

    @app.task
    async def coro(tag: str) -> None:
        asyncio.get_running_loop()  # raises outside a loop
        where[tag] = (threading.current_thread().name, kaffi.current_job().jid)

    jid_plain = plain.delay("plain")
    jid_coro = coro.delay("coro")
    with running(app.worker(concurrency=2)) as worker:
        wait_until(lambda: len(where) == 2, "both jobs")
    assert where["plain"] == (where["plain"][0], jid_plain)
    assert where["plain"][0].startswith(f"kaffi-job-{worker.wid}")
    assert where["coro"] == ("test-worker", jid_coro)


def test_never_more_than_concurrency_jobs_and_no_prefetch(app: App) -> None:
    gate = threading.Event()
    lock = threading.Lock()
    active = [0, 0]  # now, max

    @app.task
    def held() -> None:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            gate.wait(WAIT)
        finally:
            with lock:
                active[0] -= 1

    for _ in range(12):
        held.delay()
    with running(app.worker(concurrency=3)) as worker:
        wait_until(lambda: active[0] == 3, "three jobs running")
        info = stats(app)
        # Exactly the held jobs are reserved: nothing fetched ahead of a free slot.
        assert info.sets["working"] == 3
        assert info.queues["default"] == 9
        gate.set()
        wait_until(lambda: worker.processed == 12, "all twelve jobs")
    assert active[1] == 3


def test_ack_goes_out_with_the_next_fetch_in_one_write(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    original = AsyncConnection._send

    async def spy(self: AsyncConnection, data: bytes, deadline: float) -> None:
        writes.append(data)
        await original(self, data, deadline)

    monkeypatch.setattr(AsyncConnection, "_send", spy)

    @app.task
    def noop(i: int) -> None:
        return None

    jids = [noop.delay(i) for i in range(4)]
    with running(app.worker(concurrency=1)) as worker:
        wait_until(lambda: worker.processed == 4, "four jobs")
    acks = [w for w in writes if w.startswith(b"ACK ")]
    # Each job's ACK and the next FETCH leave in a single write (one round trip per job).
    for jid in jids[:3]:
        assert f'ACK {{"jid":"{jid}"}}\r\nFETCH default\r\n'.encode() in acks, acks


def test_middleware_and_context_provider_end_to_end(app: App) -> None:
    order: list[str] = []
    result: list[Any] = []

    async def outer(ctx: Any, call_next: Any) -> None:
        order.append("async-before")
        ctx.db = "connection"
        await call_next()
        order.append("async-after")

    def inner(ctx: Any, call_next: Any) -> None:
        order.append(f"sync-before {ctx.job.jobtype}")
        call_next()
        order.append("sync-after")

    app.use(outer)
    app.use(inner)

    @app.task
    def provided(x: int) -> Any:
        def provider(ctx: Any) -> None:
            result.append((x, ctx.db, kaffi.current_job().jid == ctx.job.jid))

        return provider

    @app.task
    async def aprovided(x: int) -> Any:
        async def provider(ctx: Any) -> None:
            result.append((x, ctx.db, ctx.fn is aprovided.fn))

        return provider

    provided.delay(1)
    with running(app.worker(concurrency=1)) as worker:
        wait_until(lambda: worker.processed == 1, "the sync job")
        aprovided.delay(2)
        wait_until(lambda: worker.processed == 2, "the async job")
    assert worker.failed == 0
    assert result == [(1, "connection", True), (2, "connection", True)]
    assert order[:4] == ["async-before", "sync-before provided", "sync-after", "async-after"]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_middleware_that_skips_acks_and_one_that_raises_fails(app: App, kind: str) -> None:
    ran: list[int] = []

    def gatekeeper(ctx: Any, call_next: Any) -> None:
        if ctx.job.args[0] == 0:
            return  # skipped: counts as done
        if ctx.job.args[0] == 1:
            raise PermissionError("not today")
        call_next()

    async def agatekeeper(ctx: Any, call_next: Any) -> None:
        if ctx.job.args[0] == 0:
            return
        if ctx.job.args[0] == 1:
            raise PermissionError("not today")
        await call_next()

    app.use(gatekeeper if kind == "sync" else agatekeeper)

    @app.task(retry=1)
    def job(i: int) -> None:
        ran.append(i)

    for i in range(3):
        job.delay(i)
    with running(app.worker(concurrency=1)) as worker:
        wait_until(lambda: worker.processed == 3, "three jobs")
    assert ran == [2]
    assert worker.failed == 1
    wait_until(lambda: stats(app).sets["working"] == 0, "every report to arrive")
    info = stats(app)
    assert info.sets["retries"] == 1  # the skipped job was ACKed, not failed
    failure = failure_of(app, "default")
    assert failure.errtype == "PermissionError"
    assert failure.message == "not today"


def test_server_quiet_then_terminate(app: App, faktory_server: Any) -> None:
    @app.task
    def noop() -> None:
        return None

    with running(Worker(app, concurrency=2)) as worker:
        wait_until(lambda: faktory_server.quiet_worker(worker.wid), "the server to know the worker")
        assert worker.beat() == "quiet"
        assert worker.state == "quiet"
        wait_until(lambda: worker.life.live_slots == 0, "every slot to stop fetching")
        noop.delay()
        assert stats(app).queues["default"] == 1  # nobody fetches it
        assert faktory_server.terminate_worker(worker.wid)
        assert worker.beat() == "terminate"
        assert worker._stopped.wait(WAIT), "terminate did not stop the worker"
        assert worker.state == "stopped"


def test_unknown_worker_registers_again_and_carries_on(app: App, faktory_server: Any) -> None:
    done = threading.Event()

    @app.task
    def mark() -> None:
        done.set()

    def known() -> bool:
        return any(w["wid"] == worker.wid for w in faktory_server.workers())

    def first_beat_seen() -> bool:
        # HELLO registers the worker with no rss_kb; its first BEAT reports one.
        return any(w["wid"] == worker.wid and w["rss_kb"] > 0 for w in faktory_server.workers())

    # The heartbeat beats once at start, then not for 60 s (past the per-test timeout): once
    # that first BEAT is in, no BEAT of the worker's own can come between the steps below.
    with running(app.worker(concurrency=1, beat_interval=60)) as worker:
        wait_until(first_beat_seen, "the worker's first heartbeat")
        faktory_server.advance_clock(120)  # the server forgets a worker silent for 60 s
        assert not known()
        assert worker.beat() == "OK"
        assert known()
        mark.delay()
        assert done.wait(WAIT), "no job ran after the server forgot the worker"


def test_health_file_is_touched_by_each_beat(app: App, tmp_path: Path) -> None:
    health = tmp_path / "alive"
    with running(app.worker(health_file=health)) as worker:
        wait_until(health.exists, "the first heartbeat")
        health.unlink()
        assert worker.beat() == "OK"
        assert health.exists()


def test_burst_mode_drains_and_returns(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kaffi.worker")
    seen: list[int] = []

    @app.task(queue="a")
    def first(i: int) -> None:
        seen.append(i)

    @app.task(queue="b")
    async def second(i: int) -> None:
        seen.append(100 + i)

    for i in range(10):
        first.delay(i)
        second.delay(i)
    thread, errors = start(app.worker(queues="a,b", burst=True, concurrency=4))
    thread.join(WAIT)
    assert not thread.is_alive(), "burst mode did not end"
    assert errors == []
    assert sorted(seen) == list(range(10)) + list(range(100, 110))
    info = stats(app)
    assert info.sets["working"] == 0
    # All four slots see their queues empty at about the same moment: one verdict, said once.
    verdicts = [r for r in caplog.records if "burst done" in r.getMessage()]
    assert len(verdicts) == 1, [r.getMessage() for r in verdicts]


def test_weighted_queues_take_from_both(app: App) -> None:
    seen: list[str] = []

    @app.task(queue="heavy")
    def h() -> None:
        seen.append("heavy")

    @app.task(queue="light")
    def light() -> None:
        seen.append("light")

    for _ in range(5):
        h.delay()
        light.delay()
    worker = app.worker(queues="heavy:3,light:1", burst=True, concurrency=1)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert sorted(seen) == ["heavy"] * 5 + ["light"] * 5


def test_stop_fails_stragglers_with_their_stack(app: App) -> None:
    started = threading.Event()
    release = threading.Event()

    @app.task(retry=2)
    def stuck() -> None:
        started.set()
        release.wait(WAIT)

    @app.task(retry=2)
    async def astuck() -> None:
        await asyncio.Event().wait()

    stuck.delay()
    astuck.delay()
    worker = app.worker(timeout=0.2, concurrency=2)
    try:
        with running(worker):
            assert started.wait(WAIT)
            wait_until(lambda: worker.running_jobs == 2, "both jobs running")
    finally:
        release.set()
    info = stats(app)
    assert info.sets["working"] == 0
    assert info.sets["retries"] == 2
    failures = {j.jobtype: f for j, f in failed_jobs(app, "default", 2)}
    for jobtype, where in (("stuck", "release.wait(WAIT)"), ("astuck", "asyncio.Event().wait()")):
        failure = failures[jobtype]
        assert failure.errtype == "WorkerShutdown"
        assert failure.backtrace is not None
        assert any(where in line for line in failure.backtrace), failure.backtrace


def test_worker_cannot_run_twice(app: App) -> None:
    worker = Worker(app, burst=True)
    with running(worker):
        pass
    with pytest.raises(kaffi.ConfigurationError, match="already been started"):
        asyncio.run(worker.run())


def test_an_asyncio_host_cancelling_run_gives_held_jobs_back(app: App) -> None:
    started: list[asyncio.Event] = []

    @app.task(retry=2)
    async def forever() -> None:
        started[0].set()
        await asyncio.Event().wait()

    forever.delay()
    worker = app.worker(concurrency=1, timeout=60)

    async def host() -> None:
        started.append(asyncio.Event())
        task = asyncio.ensure_future(worker.run())
        await asyncio.wait_for(started[0].wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)

    asyncio.run(host())
    assert worker.state == "stopped"
    info = stats(app)
    assert info.sets["working"] == 0
    assert info.sets["retries"] == 1


def test_a_sync_job_raising_stop_iteration_is_failed_not_hung(app: App) -> None:
    @app.task(retry=1)
    def empty_iterator() -> None:
        next(iter([]))

    empty_iterator.delay()
    with running(app.worker(concurrency=1)) as worker:
        wait_until(lambda: worker.failed == 1, "the failure")
    failure = failure_of(app, "default")
    assert failure.errtype == "RuntimeError"
    assert failure.message is not None
    assert "StopIteration" in failure.message


def test_log_records_inside_jobs_carry_jid_and_jobtype(app: App) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    user_log = logging.getLogger("tests.worker.jobs")
    handler = Keep()
    user_log.addHandler(handler)
    user_log.setLevel(logging.INFO)
    job_log = logging.getLogger("kaffi.job")
    old_level = job_log.level
    job_log.setLevel(logging.INFO)
    job_log.addHandler(handler)

    @app.task
    def plain() -> None:
        user_log.info("in a thread")

    @app.task
    async def coro() -> None:
        user_log.info("on the loop")

    try:
        jids = {plain.delay(): "plain", coro.delay(): "coro"}
        with running(app.worker(concurrency=2)) as worker:
            wait_until(lambda: worker.processed == 2, "both jobs")
    finally:
        user_log.removeHandler(handler)
        job_log.removeHandler(handler)
        job_log.setLevel(old_level)
    inside = {r.getMessage(): r for r in records if r.name == "tests.worker.jobs"}
    for message, jobtype in (("in a thread", "plain"), ("on the loop", "coro")):
        record = inside[message]
        assert record.jobtype == jobtype  # type: ignore[attr-defined]
        assert jids[record.jid] == jobtype  # type: ignore[attr-defined]
    done = [r for r in records if r.name == "kaffi.job"]
    assert sorted(r.jid for r in done) == sorted(jids)  # type: ignore[attr-defined]
    for r in done:
        assert r.levelno == logging.INFO
        assert r.outcome == "ack"  # type: ignore[attr-defined]
        assert r.duration >= 0  # type: ignore[attr-defined]
        assert r.jobtype == jids[r.jid]  # type: ignore[attr-defined]
        assert f"done {r.jobtype} {r.jid} in " in r.getMessage()  # type: ignore[attr-defined]


def test_heartbeat_reports_state_and_rss_every_interval(app: App, faktory_server: Any) -> None:
    def me() -> dict[str, Any]:
        found = [w for w in faktory_server.workers() if w["wid"] == worker.wid]
        return found[0] if found else {"rss_kb": 0, "last_beat": 0.0, "state": None}

    with running(app.worker(concurrency=1, beat_interval=0.2, labels=["x", "y"])) as worker:
        wait_until(lambda: me()["rss_kb"] > 0, "the first heartbeat")
        first = me()
        assert first["labels"] == ["x", "y"]
        assert 1_000 < first["rss_kb"] < 10_000_000
        wait_until(
            lambda: me()["last_beat"] > first["last_beat"], "a second heartbeat, one interval on"
        )
        assert me()["state"] == "running"
        worker.quiet()
        wait_until(lambda: me()["state"] == "quiet", "a heartbeat saying quiet")


def test_connections_stay_within_the_pool_size_and_end_at_shutdown(
    app: App, faktory_server: Any
) -> None:
    def connections() -> int:
        return sum(w["connections"] for w in faktory_server.workers() if w["wid"] == worker.wid)

    worker = app.worker(concurrency=3)
    with running(worker):
        # One per slot and one for the heartbeat: concurrency + 1, within pool_size.
        wait_until(lambda: connections() == 4, "every slot and the heartbeat to connect")
        assert connections() <= worker.pool_size == 5
    # Every connection was ENDed and closed.
    wait_until(lambda: connections() == 0, "the connections to close")


def test_plain_jobs_under_plain_middleware_use_at_most_concurrency_threads(app: App) -> None:
    names: set[str] = set()
    lock = threading.Lock()

    def plain_mw(ctx: Any, call_next: Any) -> None:
        call_next()

    app.use(plain_mw)

    @app.task
    def where() -> None:
        with lock:
            names.add(threading.current_thread().name)

    for _ in range(12):
        where.delay()
    with running(app.worker(concurrency=2)) as worker:
        wait_until(lambda: worker.processed == 12, "twelve jobs")
    assert worker.failed == 0
    assert 1 <= len(names) <= 2, names


def test_a_job_fetched_while_shutting_down_is_given_back(app: App, faktory_server: Any) -> None:
    """A FETCH blocked on the server when stop() comes may still bring a job: it is FAILed
    at once (or never taken), never left reserved by a worker that is leaving."""
    ran: list[int] = []

    @app.task(retry=3)
    def late() -> None:
        ran.append(1)

    def slots_connected() -> bool:
        return any(
            w["wid"] == worker.wid and w["connections"] >= 3 for w in faktory_server.workers()
        )

    worker = app.worker(concurrency=2)
    thread, errors = start(worker)
    assert worker.ready.wait(WAIT)
    wait_until(slots_connected, "the slots to connect")
    worker.stop(timeout=0)  # starts the shutdown; the FETCHes stay on the wire
    late.delay()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert errors == []
    assert ran == []
    info = stats(app)
    assert info.sets["working"] == 0, "the job stayed reserved"
    assert info.queues.get("default", 0) + info.sets["retries"] == 1, "the job was lost"
    if info.sets["retries"]:
        assert failure_of(app, "default").errtype == "WorkerShutdown"
