"""The shutdown: how a worker leaves without losing or stranding a job.

Shutdown order (SIGTERM, SIGINT, ``stop()``, a BEAT reply ``terminate``)
------------------------------------------------------------------------
1. Stop fetching: the state becomes ``terminate``; no slot sends another FETCH.
2. FETCHes already on the wire are let return (within the server's ~2 s); whatever
   they bring is FAILed at once, never left reserved by a worker that is leaving.
3. Running jobs get up to ``timeout`` seconds to finish; each is ACKed or FAILed as it
   ends. A second SIGTERM or SIGINT skips the rest of this wait.
4. Jobs still running then (the stragglers) are FAILed with the stack they are stuck in,
   so Faktory retries them; async ones are cancelled, threads are left to die with the
   process (Python cannot kill a thread).
5. The heartbeat stops (it kept beating ``terminate`` until here, so the server knows the
   worker is alive while it drains), every connection is closed with END, and ``run()``
   returns; the command line exits 0.

:func:`shutdown` does steps 1-4 and closes the slots' connections; ``Worker.run`` then
stops the heartbeat and closes its connection (step 5).

This module must not import :mod:`kaffi.worker.worker`.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import traceback
from types import FrameType

from kaffi.protocol.commands import encode_fail, format_backtrace
from kaffi.worker.processor import SHUTDOWN_ERRTYPE, Processor, Slot

__all__ = ["FETCH_GRACE_SECONDS", "shutdown"]

log = logging.getLogger("kaffi.worker")

#: How long shutdown waits, past the job timeout, for FETCHes already on the wire. The
#: server answers an empty FETCH after about 2 s; this only bounds a server that hangs.
FETCH_GRACE_SECONDS = 12.0


async def shutdown(processor: Processor) -> None:
    """Steps 1-4 of the shutdown order above, then END on every slot's connection."""
    life = processor.life
    assert life.hurry is not None
    # 1. Stop fetching (no-op when already terminating).
    life.request_stop(life.stop_reason or "shutdown")
    slots = processor.slots
    tasks = [s.task for s in slots if s.task is not None]
    # 2 and 3. Let FETCHes on the wire return (slots FAIL what they bring) and running
    # jobs finish, for up to `timeout` seconds or until a second SIGTERM or SIGINT.
    deadline = time.monotonic() + life.timeout
    hurry = asyncio.ensure_future(life.hurry.wait())
    try:
        while not life.hurry_requested:
            pending = [t for t in tasks if not t.done()]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0 or not any(s.job for s in slots):
                break
            await asyncio.wait(
                [*pending, hurry], timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        # 4. Stragglers: FAIL them with the stack they are stuck in, then let them go.
        stragglers = [
            s for s in slots if s.job is not None and s.task is not None and not s.task.done()
        ]
        if stragglers:
            await asyncio.gather(*(_abandon(processor, s) for s in stragglers))
        # FETCHes still on the wire (no job yet): the server answers them within ~2 s.
        fetch_deadline = time.monotonic() + FETCH_GRACE_SECONDS
        while True:
            pending = [t for t in tasks if not t.done()]
            remaining = fetch_deadline - time.monotonic()
            if not pending:
                break
            if remaining <= 0:
                log.error(
                    "worker %s: %d connections still busy %gs into shutdown; closing them",
                    life.wid,
                    len(pending),
                    FETCH_GRACE_SECONDS,
                )
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                break
            await asyncio.wait(pending, timeout=remaining)
    finally:
        hurry.cancel()
    # 5 (the slots' part). END on every connection; run() stops the heartbeat.
    await asyncio.gather(*(processor.connector.close(s.conn) for s in slots))
    for s in slots:
        s.conn = None


async def _abandon(processor: Processor, slot: Slot) -> None:
    """FAIL a job still running after the timeout, with the stack it is stuck in."""
    job = slot.job
    task = slot.task
    if job is None or task is None:
        return
    life = processor.life
    # Read the stack before cancelling: cancellation unwinds an async job's frames.
    stack = stack_of(slot)
    slot.abandoned = True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    ran = time.monotonic() - slot.started
    backtrace = format_backtrace(stack, job.backtrace)
    line = encode_fail(
        job.jid,
        SHUTDOWN_ERRTYPE,
        f"job still running after {ran:.1f}s when worker {life.wid} shut down"
        f" (timeout {life.timeout:g}s); Faktory will retry it",
        backtrace,
    )
    life.processed += 1
    life.failed += 1
    log.warning(
        "worker %s: job %s (%s) still running at shutdown: FAILed for a retry",
        life.wid,
        job.jid,
        job.jobtype,
    )
    await processor.report(slot, line)


def stack_of(slot: Slot) -> traceback.StackSummary:
    """Where the slot's job is now: its thread's stack, else its coroutine chain."""
    if slot.thread_id is not None:
        frame = sys._current_frames().get(slot.thread_id)
        if frame is not None:
            return traceback.extract_stack(frame)
    if slot.task is not None:
        frames = _coroutine_frames(slot.task.get_coro())
        return traceback.StackSummary.extract((f, f.f_lineno) for f in frames)
    return traceback.StackSummary()


def _coroutine_frames(coro: object) -> list[FrameType]:
    """The frames of a suspended coroutine chain, outermost first (Task.get_stack gives
    only the outermost one)."""
    frames: list[FrameType] = []
    seen = 0
    while coro is not None and seen < 200:
        seen += 1
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames
