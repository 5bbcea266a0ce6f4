"""Producers for the fault tests: threads that push jobs and remember each outcome.

A producer pushes one ``work`` job at a time until told to stop or its quota is done,
and records, per push, the jid it returned or the kaffi error it raised: the rule under
test is that a push either returns a jid or raises, and that every returned jid runs.
One flavour uses the sync :class:`kaffi.Client`, the other :class:`kaffi.AsyncClient`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field

import kaffi
from kaffi.errors import KaffiError

__all__ = ["Producer", "Producers"]

#: Between two pushes: keeps a fault window from passing between a handful of pushes.
PACE = 0.003


@dataclass
class Producer:
    url: str
    quota: int
    use_async: bool = False
    seconds: float = 0.005
    accepted: list[str] = field(default_factory=list)
    attempted: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[BaseException] = field(default_factory=list)

    def _job(self, n: int) -> dict[str, object]:
        jid = kaffi.Job.new_jid()
        self.attempted.append(jid)
        return {"jid": jid, "jobtype": "work", "args": [n, self.seconds], "reserve_for": 60}

    def run(self, stop: threading.Event) -> None:
        try:
            if self.use_async:
                asyncio.run(self._run_async(stop))
            else:
                self._run_sync(stop)
        except BaseException as exc:  # reported by the test thread
            self.unexpected.append(exc)

    def _run_sync(self, stop: threading.Event) -> None:
        with kaffi.Client(self.url, timeout=5, connect_timeout=2, pool_size=2) as client:
            for n in range(self.quota):
                if stop.is_set():
                    return
                job = self._job(n)
                try:
                    self.accepted.append(client.push(job))
                except KaffiError as exc:
                    self.errors[type(exc).__name__] += 1
                stop.wait(PACE)

    async def _run_async(self, stop: threading.Event) -> None:
        client = kaffi.AsyncClient(self.url, timeout=5, connect_timeout=2, pool_size=2)
        try:
            for n in range(self.quota):
                if stop.is_set():
                    return
                job = self._job(n)
                try:
                    self.accepted.append(await client.push(job))
                except KaffiError as exc:
                    self.errors[type(exc).__name__] += 1
                await asyncio.sleep(PACE)
        finally:
            await client.close()


class Producers:
    """Several producers in threads, started together, joined with a deadline."""

    def __init__(self, url: str, *, quota: int, count: int = 2) -> None:
        self.stop = threading.Event()
        self.producers = [Producer(url, quota, use_async=bool(i % 2)) for i in range(count)]
        self.threads = [
            threading.Thread(target=p.run, args=(self.stop,), daemon=True, name=f"producer-{i}")
            for i, p in enumerate(self.producers)
        ]

    def start(self) -> Producers:
        for thread in self.threads:
            thread.start()
        return self

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
        alive = [t.name for t in self.threads if t.is_alive()]
        self.stop.set()
        assert not alive, f"producers still pushing after {timeout:g}s: {alive}"
        problems = [exc for p in self.producers for exc in p.unexpected]
        assert not problems, f"a push raised something other than a kaffi error: {problems[0]!r}"

    def halt(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    @property
    def accepted(self) -> set[str]:
        return {jid for p in self.producers for jid in p.accepted}

    @property
    def attempted(self) -> set[str]:
        return {jid for p in self.producers for jid in p.attempted}

    @property
    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for p in self.producers:
            total.update(p.errors)
        return total

    @property
    def outcomes(self) -> int:
        return sum(len(p.accepted) + sum(p.errors.values()) for p in self.producers)
