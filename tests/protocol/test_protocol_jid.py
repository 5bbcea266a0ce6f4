"""``new_jid``: 24 lowercase hex characters from os.urandom, fetched in batches. A jid is
never handed out twice: not across threads, and not across a fork (the child drops the
parent's spare jids)."""

from __future__ import annotations

import os
import re
import threading

import pytest

from kaffi.protocol import models
from kaffi.protocol.models import new_jid

HEX24 = re.compile(r"[0-9a-f]{24}")


def test_format_matches_the_official_clients() -> None:
    # More than one batch, so refills are covered too.
    jids = [new_jid() for _ in range(3 * models._JID_BATCH + 7)]
    assert all(HEX24.fullmatch(jid) for jid in jids)
    assert len(set(jids)) == len(jids)


def test_threads_never_share_a_jid() -> None:
    per_thread = 2 * models._JID_BATCH
    results: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def take(out: list[str]) -> None:
        start.wait(timeout=10)
        out.extend(new_jid() for _ in range(per_thread))

    threads = [threading.Thread(target=take, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    everything = [jid for out in results for jid in out]
    assert len(everything) == 8 * per_thread
    assert len(set(everything)) == len(everything)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_reuse_the_parents_spare_jids() -> None:
    new_jid()  # the parent now holds spare jids
    assert models._spare_jids
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first jids, then leave at once
        try:
            os.close(read_end)
            os.write(write_end, ",".join(new_jid() for _ in range(4)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read().decode().split(",")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent = [new_jid() for _ in range(4)]
    assert len(child) == 4
    assert all(HEX24.fullmatch(jid) for jid in child)
    assert not set(child) & set(parent)
