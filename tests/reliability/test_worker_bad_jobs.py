"""Jobs a worker cannot run: each is FAILed with a clear errtype and message, and the
worker goes on with the next job.

The failures are read back without MUTATE tricks on the data: the retry set is requeued
(``client.retries.requeue()``) after the worker stopped, and every job is fetched once
more to read the ``failure`` record the server attached.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

import kaffi
from kaffi.protocol.models import JobPayload
from tests.support import embedded_server, running, wait_until

pytestmark = pytest.mark.reliability


def test_unrunnable_jobs_are_failed_clearly_and_the_worker_goes_on() -> None:
    done: list[tuple[int, int]] = []
    with embedded_server() as server:
        app = kaffi.App(server.url)

        @app.task
        def add(x: int, y: int) -> None:
            done.append((x, y))

        @app.task
        def at_time(when: datetime, count: int = 1) -> None:
            done.append((when.year, count))

        client = app.client
        raw: dict[str, dict[str, Any]] = {
            "unknown jobtype": {"jobtype": "no_such_task", "args": [1]},
            "too many args": {"jobtype": "add", "args": [1, 2, 3]},
            "too few args": {"jobtype": "add", "args": [1]},
            "not an int": {"jobtype": "add", "args": ["one", 2]},
            "not a datetime": {"jobtype": "at_time", "args": ["yesterday-ish", 2]},
            "wrong nested type": {"jobtype": "add", "args": [[1], {"y": 2}]},
        }
        jids: dict[str, str] = {}
        for label, job in raw.items():
            jids[label] = client.push({**job, "retry": 5, "queue": "bad"})
        good = [client.push({"jobtype": "add", "args": [n, n], "queue": "bad"}) for n in range(5)]
        converted = client.push(
            {"jobtype": "at_time", "args": ["2030-01-02T03:04:05Z"], "queue": "bad"}
        )
        pushed = len(jids) + len(good) + 1

        worker = app.worker(queues=["bad"], concurrency=3, timeout=2)
        with running(worker):
            wait_until(
                lambda: (
                    server.info()["faktory"]["sets"]["retries"] == len(jids)
                    and len(done) == len(good) + 1
                ),
                lambda: (
                    f"{len(jids)} failures and {len(good) + 1} successes; got"
                    f" sets={server.info()['faktory']['sets']} done={done}"
                ),
            )
        sets = server.info()["faktory"]["sets"]
        figures = (
            f"pushed={pushed}, processed={worker.processed}, failed={worker.failed},"
            f" done={len(done)}, retries={sets['retries']}, working={sets['working']}"
        )
        assert sets["working"] == 0, figures
        assert worker.processed == pushed, figures
        assert worker.failed == len(jids), figures
        assert sorted(done) == sorted([(n, n) for n in range(5)] + [(2030, 1)]), figures

        client.retries.requeue()
        failures: dict[str, JobPayload] = {}
        for _ in jids:
            back = client.fetch("bad")
            assert back is not None, (
                f"a failed job did not come back from the retry set ({figures})"
            )
            failures[back.jid] = back
            client.ack(back.jid)
        assert set(failures) == set(jids.values()), figures
        assert converted not in failures

        def failure(label: str) -> tuple[str, str]:
            record = failures[jids[label]].failure
            assert record is not None, f"{label}: no failure record"
            assert record.backtrace, f"{label}: no backtrace"
            return record.errtype or "", record.message or ""

        errtype, message = failure("unknown jobtype")
        assert errtype == "UnknownJobType", (errtype, message)
        assert "no_such_task" in message, message
        assert "add" in message, message

        for label, needle in (("too many args", "at most 2"), ("too few args", "'y'")):
            errtype, message = failure(label)
            assert errtype == "ArgumentsError", (label, errtype, message)
            assert "add" in message, (label, message)
            assert needle in message, (label, message)

        errtype, message = failure("not an int")
        assert errtype == "ArgumentsError", (errtype, message)
        assert "'x'" in message, message
        assert "one" in message, message

        errtype, message = failure("not a datetime")
        assert errtype == "ArgumentsError", (errtype, message)
        assert "'when'" in message, message
        assert "yesterday-ish" in message, message

        errtype, message = failure("wrong nested type")
        assert errtype == "ArgumentsError", (errtype, message)
        assert "'x'" in message, message
        assert "'y'" in message, message
        app.close()


def test_a_job_that_raises_system_exit_fails_and_the_worker_survives() -> None:
    done: list[int] = []
    with embedded_server() as server:
        app = kaffi.App(server.url)

        @app.task
        def leave(code: int) -> None:
            raise SystemExit(code)

        @app.task
        def interrupt() -> None:
            raise KeyboardInterrupt

        @app.task
        def fine(n: int) -> None:
            done.append(n)

        client = app.client
        exits = client.push({"jobtype": "leave", "args": [3], "retry": 5})
        interrupted = client.push({"jobtype": "interrupt", "args": [], "retry": 5})
        later = [client.push({"jobtype": "fine", "args": [n]}) for n in range(10)]
        worker = app.worker(concurrency=2, timeout=2)
        with running(worker):
            wait_until(
                lambda: (
                    len(done) == len(later) and server.info()["faktory"]["sets"]["retries"] == 2
                ),
                lambda: (
                    f"10 jobs after the exits; done={len(done)},"
                    f" sets={server.info()['faktory']['sets']}"
                ),
            )
            assert worker.state == "running"
        client.retries.requeue()
        seen = {}
        for _ in range(2):
            job = client.fetch("default")
            assert job is not None
            assert job.failure is not None
            seen[job.jid] = (job.failure.errtype, job.failure.message or "")
            client.ack(job.jid)
        assert seen[exits][0] == "SystemExit", seen
        assert "cannot stop the worker" in seen[exits][1], seen
        assert seen[interrupted][0] == "KeyboardInterrupt", seen
        app.close()
