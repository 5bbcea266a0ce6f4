"""Faktory Enterprise through the PyPI ``pyfaktory`` package, against ``kaffi server
--enterprise``: what a pyfaktory user can do with batches and unique jobs.

1. A batch with a success and a complete callback: BATCH NEW, N/2 jobs carrying
   ``custom.bid``, COMMIT, BATCH OPEN, the other N/2 jobs, COMMIT again; every job fetched
   and ACKed with pyfaktory's client, BATCH STATUS read after each step, the callbacks
   fetched in Enterprise's order (complete; success only once complete is ACKed).
2. A second batch run by pyfaktory's own ``Consumer`` (its jobs and both callbacks), stopped
   with SIGTERM, as its users stop it, once the batch says its success callback finished.
3. A unique job (``custom.unique_for``) pushed twice: the second is refused, and how
   pyfaktory surfaces the refusal; accepted again once the first is ACKed.

Usage: python pypi_pyfaktory_enterprise.py tcp://127.0.0.1:PORT N   (prints a JSON summary)
"""

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pyfaktory import Client, Consumer, Job, Producer
from pyfaktory.models import Batch, TargetJob
from pyfaktory.util.exceptions import FaktroyWorkProtocolError
from pyfaktory.util.helper import RESP

JOBS = "compat-ent"
CALLBACKS = "compat-ent-cb"
UNIQUE = "compat-ent-unique"
#: pyfaktory's shortest heartbeat period: a client's heartbeat thread ends within it.
BEAT = 5
#: How long the Consumer may take to run the second batch.
DEADLINE = 40.0


def bulk(reply: str) -> str:
    """The text of a raw bulk reply, as pyfaktory itself reads bulk replies."""
    assert reply.startswith("$"), reply
    text: str = RESP.parse_bulk_string(reply)[1]
    return text


def status(client: Client, bid: str) -> dict[str, Any]:
    """BATCH STATUS through pyfaktory (its ``_batch_status`` returns the raw reply)."""
    doc: dict[str, Any] = json.loads(bulk(client._batch_status(bid)))
    return doc


def states(doc: dict[str, Any]) -> list[Any]:
    """The counts and callback states of a BATCH STATUS document."""
    return [doc["total"], doc["pending"], doc["failed"], doc["complete_st"], doc["success_st"]]


def callbacks(tag: str) -> Batch:
    """A batch definition with both callbacks, as pyfaktory builds it."""
    return Batch(
        parent_bid=None,
        description=f"compat {tag}",
        success=TargetJob(jobtype="compat.success", args=[tag], queue=CALLBACKS),
        complete=TargetJob(jobtype="compat.complete", args=[tag], queue=CALLBACKS),
    )


def error_text(call: Callable[..., Any], *args: Any) -> str:
    """The message of the FaktroyWorkProtocolError a pyfaktory call raises."""
    try:
        call(*args)
    except FaktroyWorkProtocolError as exc:
        return str(exc)
    raise AssertionError(f"{call.__name__}{args} was accepted")


def queued(client: Client, queue: str) -> int:
    """How many jobs wait in a queue (INFO through pyfaktory)."""
    size: int = client.info()["faktory"]["queues"].get(queue, 0)
    return size


def batch_by_hand(client: Client, producer: Producer, total: int) -> dict[str, Any]:
    """Part 1: a batch built, reopened and drained with pyfaktory's client."""
    new_reply = producer.batch_new(callbacks("by-hand"))
    bid = bulk(new_reply)
    first, second = total // 2, total - total // 2
    for i in range(first):
        assert producer.push(
            Job(jobtype="compat.add", args=[i, i], queue=JOBS, custom={"bid": bid})
        )
    committed = producer.batch_commit(bid)
    after_commit = states(status(client, bid))
    reopened = producer.batch_open(bid)
    for i in range(first, first + second):
        assert producer.push(
            Job(jobtype="compat.add", args=[i, i], queue=JOBS, custom={"bid": bid})
        )
    assert producer.batch_commit(bid)
    after_reopen = states(status(client, bid))
    total_sum = 0
    bids: set[str] = set()
    for _ in range(total):
        job = client._fetch([JOBS])
        assert job is not None, "a batch job is missing"
        total_sum += sum(job["args"])
        bids.add(job["custom"]["bid"])
        client._ack(job["jid"])
    after_jobs = states(status(client, bid))
    seen: list[dict[str, Any]] = []
    # Enterprise enqueues the complete callback first and success only after complete is
    # ACKed: the callbacks queue holds one job at a time.
    for expected in ("compat.complete", "compat.success"):
        waiting = queued(client, CALLBACKS)
        callback = client._fetch([CALLBACKS])
        assert callback is not None, f"no {expected} callback"
        custom = callback.get("custom", {})
        seen.append(
            {
                "jobtype": callback["jobtype"],
                "args": callback["args"],
                "waiting": waiting,
                "_bid": custom.get("_bid") == bid,
                "has_bid": "bid" in custom,
            }
        )
        client._ack(callback["jid"])
        seen[-1]["status_after_ack"] = states(status(client, bid))
    doc = status(client, bid)
    return {
        "new_reply_kind": new_reply[0],
        "bid": bid,
        "committed": committed,
        "reopened": reopened,
        "status_keys": sorted(doc),
        "description": doc.get("description"),
        "after_commit": after_commit,
        "after_reopen": after_reopen,
        "after_jobs": after_jobs,
        "callbacks": seen,
        "sum": total_sum,
        "job_bids": sorted(bids),
        "reopen_after_callbacks": producer.batch_open(bid),
        "unknown_status": error_text(client._batch_status, "b-nope"),
        "unknown_open": error_text(producer.batch_open, "b-nope"),
    }


def add(a: int, b: int) -> int:
    """The batch jobs' handler in pyfaktory's Consumer."""
    return a + b


def callback(tag: str) -> str:
    """The callbacks' handler in pyfaktory's Consumer."""
    return tag


def batch_by_consumer(url: str, producer: Producer, client: Client, total: int) -> dict[str, Any]:
    """Part 2: pyfaktory's Consumer runs a batch and its callbacks."""
    bid = bulk(producer.batch_new(callbacks("consumer")))
    for i in range(total):
        assert producer.push(
            Job(jobtype="compat.add", args=[i, 1], queue=JOBS, custom={"bid": bid})
        )
    assert producer.batch_commit(bid)
    finished = threading.Event()

    def watch() -> None:
        # pyfaktory's Consumer runs until a signal: stop it once the batch is done.
        deadline = time.monotonic() + DEADLINE
        with Client(faktory_url=url, role="producer") as watcher:
            while time.monotonic() < deadline:
                if status(watcher, bid)["success_st"] == "2":
                    finished.set()
                    break
                time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    with Client(
        faktory_url=url, role="consumer", worker_id="compat-ent-consumer", beat_period=BEAT
    ) as consumer_client:
        consumer = Consumer(
            client=consumer_client,
            queues=[JOBS, CALLBACKS],
            priority="strict",
            concurrency=2,
            grace_period=10,
            context=multiprocessing.get_context("fork"),
        )
        consumer.register("compat.add", add)
        consumer.register("compat.complete", callback)
        consumer.register("compat.success", callback)
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            consumer.run()
        except SystemExit:
            pass  # Consumer.run always ends with sys.exit(1) after its grace period
        watcher.join(DEADLINE)
    return {
        "finished": finished.is_set(),
        "status": states(status(client, bid)),
        "queued": queued(client, JOBS) + queued(client, CALLBACKS),
    }


def unique_job(client: Client, producer: Producer) -> dict[str, Any]:
    """Part 3: a unique job pushed twice, then again after the first succeeded."""

    def job() -> Job:
        return Job(jobtype="compat.unique", args=[7], queue=UNIQUE, custom={"unique_for": 60})

    first = producer.push(job())
    duplicate = error_text(producer.push, job())
    running = client._fetch([UNIQUE])
    while_running = error_text(producer.push, job())
    client._ack(running["jid"])
    return {
        "first": first,
        "duplicate": duplicate,
        "while_running": while_running,
        "after_ack": producer.push(job()),
        "queued": queued(client, UNIQUE),
    }


def main() -> None:
    """Run the three parts and print their summary as one JSON line."""
    url, total = sys.argv[1], int(sys.argv[2])
    with Client(
        faktory_url=url, role="both", worker_id="compat-ent-client", beat_period=BEAT
    ) as client:
        producer = Producer(client=client)
        enterprise = "Enterprise" in client.info()["server"]["description"]
        by_hand = batch_by_hand(client, producer, total)
        unique = unique_job(client, producer)
        by_consumer = batch_by_consumer(url, producer, client, total)
    summary = {
        "enterprise": enterprise,
        "by_hand": by_hand,
        "by_consumer": by_consumer,
        "unique": unique,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
