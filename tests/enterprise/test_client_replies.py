"""The exact reply frames other Faktory Enterprise clients depend on, read raw off the
socket (``tests/server/wire.py``), each with a comment naming the client that needs it
(``shared/faktory/ENTERPRISE.md`` sections 1, 2 and 9). What the commands do is tested in
``test_batch_server.py`` and ``test_core.py``; this file pins the shapes: bulk string or
``+OK``, the BID's alphabet, the JSON documents' keys and types. Texts already pinned
there (``-ERR no such batch <bid>``, ``-NOTUNIQUE Job not unique``, INFO's description in
both modes) are not repeated here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from kaffi.protocol.models import parse_rfc3339
from tests.server.wire import Wire

#: Enterprise's BID: "b-" and 14 URL-safe characters (a BID captured from real Ent).
BID = re.compile(r"b-[A-Za-z0-9_-]{14}")
#: A time as Go's RFC3339Nano writes it, which every client's date parser reads.
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z")
#: A callback as pyfaktory sends it: jobtype, args and queue only.
CALLBACK = {"jobtype": "cb", "args": [], "queue": "cb"}


@pytest.fixture
def wire(faktory_enterprise_server: Any) -> Iterator[Wire]:
    connection = Wire.hello(
        faktory_enterprise_server, password=getattr(faktory_enterprise_server, "password", None)
    )
    yield connection
    connection.close()


def bulk(reply: list[str]) -> str:
    """The text of a bulk string reply; fails on any other frame."""
    assert len(reply) == 2, reply
    assert reply[0] == f"${len(reply[1].encode())}", reply
    return reply[1]


def new_batch(wire: Wire, **doc: Any) -> str:
    doc.setdefault("complete", CALLBACK)
    return bulk(wire.send("BATCH NEW " + json.dumps(doc)))


def status(wire: Wire, bid: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(bulk(wire.send(f"BATCH STATUS {bid}")))
    return doc


def push(wire: Wire, jid: str, **custom: Any) -> None:
    job = {"jid": jid, "jobtype": "work", "args": [], "custom": custom}
    assert wire.send("PUSH " + json.dumps(job)) == ["+OK"]


def run_one(wire: Wire, queue: str) -> dict[str, Any]:
    job: dict[str, Any] = json.loads(bulk(wire.send(f"FETCH {queue}")))
    assert wire.send("ACK " + json.dumps({"jid": job["jid"]})) == ["+OK"]
    return job


def test_batch_new_replies_the_bid_as_a_bulk_string(wire: Wire) -> None:
    # Rust's read_bid accepts only a bulk string; Go's BatchNew takes the text as the BID.
    bids = {new_batch(wire) for _ in range(40)}
    assert len(bids) == 40
    for bid in bids:
        assert BID.fullmatch(bid), bid


@pytest.mark.parametrize(
    "doc",
    [
        # Go's BatchNew: "bid":"" always, callbacks are whole Go Jobs (jid, created_at, retry).
        {
            "bid": "",
            "description": "go",
            "success": {
                "jid": "0123456789abcdef01234567",
                "queue": "cb",
                "jobtype": "cb",
                "args": [],
                "created_at": "2026-01-02T03:04:05.123456789Z",
                "retry": 25,
            },
        },
        # Ruby's create_batch: callbacks with a 24-hex jid, args [] and queue "default".
        {"complete": {"jid": "a" * 24, "jobtype": "cb", "args": [], "queue": "default"}},
        # pyfaktory's batch_new: no parent_bid key, callbacks without a jid.
        {"description": "py", "success": CALLBACK, "complete": CALLBACK},
    ],
    ids=["go", "ruby", "pyfaktory"],
)
def test_each_clients_batch_new_document_gets_a_bid(wire: Wire, doc: dict[str, Any]) -> None:
    bid = bulk(wire.send("BATCH NEW " + json.dumps(doc)))
    assert BID.fullmatch(bid)
    assert wire.send(f"BATCH COMMIT {bid}") == ["+OK"]
    first = doc.get("complete") or doc["success"]
    callback = run_one(wire, first["queue"])
    if "jid" in first:
        assert callback["jid"] == first["jid"]  # the jid a Go or Ruby client chose
    else:
        assert re.fullmatch(r"[0-9a-f]{24}", callback["jid"])  # minted for pyfaktory
    # Go's CallbackBid and Ruby's Job#bid read these: _bid, never bid.
    assert callback["custom"] == {"_bid": bid}


def test_batch_open_replies_the_bid_as_a_bulk_string(wire: Wire) -> None:
    bid = new_batch(wire)
    # Go's BatchOpen uses the reply text as the BID (a "+OK" would make the BID "OK"),
    # Rust's open_batch requires a bulk BID; before and after COMMIT alike.
    assert wire.send(f"BATCH OPEN {bid}") == [f"${len(bid)}", bid]
    assert wire.send(f"BATCH COMMIT {bid}") == ["+OK"]
    assert wire.send(f"BATCH OPEN {bid}") == [f"${len(bid)}", bid]


def test_batch_commit_replies_plain_ok(wire: Wire) -> None:
    bid = new_batch(wire)
    push(wire, "j" * 24, bid=bid)
    # Go's BatchCommit and Ruby's create_batch read it with `ok`: a simple "+OK" only.
    assert wire.send(f"BATCH COMMIT {bid}") == ["+OK"]
    # Ruby's reopen_batch commits again after OPEN.
    bulk(wire.send(f"BATCH OPEN {bid}"))
    assert wire.send(f"BATCH COMMIT {bid}") == ["+OK"]


def test_batch_status_has_the_documented_keys_and_types(wire: Wire) -> None:
    parent = new_batch(wire, description="parent")
    # Not ASCII: Go's and Rust's readers take a bulk string's length in bytes (bulk()).
    child = new_batch(wire, parent_bid=parent, description="child ☕")
    plain = new_batch(wire)
    push(wire, "k" * 24, bid=child)
    assert wire.send(f"BATCH COMMIT {child}") == ["+OK"]
    run_one(wire, "default")
    run_one(wire, "cb")  # the child's complete callback: complete_st "2"
    # Go's BatchStatus struct (strings, int64 counts, parent_bid and description
    # omitempty), and the same keys in Rust's, Ruby's and Haskell's readers.
    doc = status(wire, child)
    created_at = doc.pop("created_at")
    assert doc == {
        "bid": child,
        "parent_bid": parent,
        "description": "child ☕",
        "total": 1,
        "pending": 0,
        "failed": 0,
        "complete_st": "2",
        "success_st": "",
    }
    assert TIME.fullmatch(created_at), created_at
    for doc in (status(wire, child), status(wire, parent), status(wire, plain)):
        for key in ("total", "pending", "failed"):
            assert type(doc[key]) is int, (key, doc)
        # Go and Rust read the callback states as strings: "" / "1" / "2", never numbers.
        assert doc["complete_st"] in ("", "1", "2")
        assert doc["success_st"] in ("", "1", "2")
        # Rust parses created_at as an RFC 3339 DateTime.
        assert TIME.fullmatch(doc["created_at"]), doc
        parse_rfc3339(doc["created_at"])
    assert set(status(wire, plain)) == {
        *("bid", "created_at", "total", "pending", "failed", "complete_st", "success_st")
    }


def test_track_get_of_an_unknown_jid_is_the_observed_document(wire: Wire) -> None:
    # Byte for byte the reply faktory-rs recorded from real Enterprise (ENTERPRISE.md 2).
    assert wire.send("TRACK GET nope") == [
        "$48",
        '{"jid":"nope","state":"unknown","updated_at":""}',
    ]


def test_track_set_and_get_shapes(wire: Wire) -> None:
    push(wire, "t" * 24, track=1)
    line = json.dumps({"jid": "t" * 24, "percent": 40, "desc": "parsing"})
    # Go's TrackSet and Ruby's set_track read the reply with `ok`.
    assert wire.send(f"TRACK SET {line}") == ["+OK"]
    doc = json.loads(bulk(wire.send("TRACK GET " + "t" * 24)))
    # Go's JobTrack: percent int, desc string, state and updated_at strings; Rust parses
    # updated_at as an RFC 3339 DateTime once it is not "".
    assert doc == {
        "jid": "t" * 24,
        "percent": 40,
        "desc": "parsing",
        "state": "enqueued",
        "updated_at": doc["updated_at"],
    }
    assert TIME.fullmatch(doc["updated_at"]), doc
