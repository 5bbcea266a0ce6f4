"""Each occurrence runs exactly once, whatever happens to the schedulers (real processes).

One scenario, on the embedded server, with ``every=2 s``, a 5 s look-ahead and a 2 s
margin, one ``kaffi worker`` and ``kaffi beat`` processes A and B:

1. A and B both run: every occurrence is pushed twice and must run once;
2. A is killed (SIGKILL): B alone must lose none;
3. A is started again while B runs (a restart mid-way): its pushes of occurrences B
   already pushed must not run twice;
4. B is killed: the restarted A alone must skip none.

The test waits on the runs themselves (each run appends its occurrence to a file), with
bounded deadlines; it never sleeps to synchronise. It checks every occurrence from the
first one after both schedulers started to the last one only the restarted A can have
pushed: exactly one run each, no gap, no duplicate.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.periodic.procs import Proc, read_runs, write_app
from tests.support import wait_until

EVERY = 2
LOOKAHEAD = 5
MARGIN = 2


def stamp(seconds: int) -> str:
    """The occurrence's RFC 3339 text, as the jobs carry it."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def next_occurrence(after: float) -> int:
    """The first occurrence (Unix seconds) strictly after ``after``."""
    return (math.floor(after / EVERY) + 1) * EVERY


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_each_occurrence_runs_exactly_once_through_kills_and_a_restart(
    faktory_server: Any, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    log = tmp_path / "runs.log"
    env = {"FAKTORY_URL": faktory_server.url, "TICK_LOG": str(log), "TICK_EVERY": str(EVERY)}
    beat_args = ("beat", app, "--lookahead", str(LOOKAHEAD), "--margin", str(MARGIN))
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        proc = Proc(*args, cwd=tmp_path, env=env)
        procs.append(proc)
        return proc

    def ran(seconds: int) -> bool:
        return any(occurrence == stamp(seconds) for occurrence, _ in read_runs(log))

    try:
        worker = start("worker", app, "--concurrency", "5")
        beat_a, beat_b = start(*beat_args), start(*beat_args)
        both_started = max(beat_a.wait_for("beat started"), beat_b.wait_for("beat started"))
        # Phase 1: both push. The first occurrence both have surely seen in their window.
        first = next_occurrence(both_started + MARGIN)
        wait_until(lambda: ran(first), "the first run with A and B", 30)
        # Phase 2: A dies without a word; B alone.
        beat_a.kill()
        # Phase 3: A comes back (a restart mid-way) while B still runs.
        beat_a2 = start(*beat_args)
        restarted = beat_a2.wait_for("beat started")
        # Phase 4: B dies; what B had not pushed yet, only the restarted A can push.
        beat_b.kill()
        killed_b = time.time()
        assert restarted < killed_b
        last = next_occurrence(killed_b + LOOKAHEAD + EVERY)
        # Wait for the occurrence after the last one checked: the server moves due jobs
        # in time order, so a duplicate of any checked occurrence was queued before it,
        # and the worker (5 slots, FIFO) had started it by then.
        wait_until(lambda: ran(last + EVERY), "the runs after B was killed", 60)
        assert beat_a2.stop() == 0, beat_a2.output
        assert worker.stop() == 0, worker.output
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.kill()

    # Who pushed what, from each scheduler's log ("pushed the occurrence at ...Z").
    pushers: Counter[str] = Counter()
    for proc in (beat_a, beat_b, beat_a2):
        for when in re.findall(r"pushed the occurrence at (\S+)Z", proc.output):
            pushers[when.replace("Z", "") + ".000000Z"] += 1
    runs = Counter(occurrence for occurrence, _ in read_runs(log))
    expected = [stamp(s) for s in range(first, last + 1, EVERY)]
    counts = {occurrence: runs[occurrence] for occurrence in expected}
    missing = [o for o, n in counts.items() if n == 0]
    doubled = {o: n for o, n in runs.items() if n > 1}
    print(
        f"\nexactly-once: {len(expected)} occurrences checked ({stamp(first)} .. {stamp(last)}),"
        f" {sum(counts.values())} runs, {len(missing)} missing, {len(doubled)} run more than"
        f" once; {sum(runs.values())} runs in all; pushes per occurrence:"
        f" {[pushers[o] for o in expected]}"
    )
    assert missing == []
    assert doubled == {}
    assert all(n == 1 for n in counts.values())
    assert len(expected) >= 5
    # The proof needs both situations: occurrences pushed by two schedulers (merged by
    # the server) and, at the end, occurrences that only the restarted A pushed.
    assert max(pushers[o] for o in expected) >= 2
    assert pushers[expected[-1]] == 1
    # The jid names the schedule and the occurrence.
    jids = dict(read_runs(log))
    for occurrence in expected:
        compact = occurrence[:19].replace("-", "").replace(":", "")
        assert re.fullmatch(rf"tick@{compact}Z~[0-9a-f]{{10}}", jids[occurrence])
    assert timedelta(seconds=last - first) >= timedelta(seconds=LOOKAHEAD + EVERY)
    assert "pushed the occurrence" in beat_a2.output
