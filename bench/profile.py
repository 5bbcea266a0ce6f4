"""``python -m bench.profile TARGET``: where the time goes on one hot path, with py-spy.

Targets:

- ``delay``: ``.delay()`` one at a time; ``push-bulk``: ``client.push_bulk``;
- ``drain`` / ``drain-async``: ``kaffi worker`` draining no-op jobs (plain / ``async def``);
- ``server-seq`` / ``server-fetch``: the embedded server under one-round-trip PUSHes /
  under the 20-connection FETCH+ACK loop (py-spy attached to the server process).

py-spy (a bench-only tool, installed into ``bench/.env/venv`` with the peers) samples the
process; ``--gil`` keeps only samples of the thread holding the GIL, which is where a
Python process spends its CPU. The collapsed stacks go to ``bench/results/profile-TARGET.txt``
and a summary is printed: the functions with the most samples of their own ("self") and
including their callees ("inclusive"), with the file they are in.
"""

from __future__ import annotations

import argparse
import collections
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import kaffi_suite, raw
from bench.harness import (
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    Endpoint,
    ServerControl,
    ServerProcess,
    child_env,
    stop_process,
)
from bench.peers import VENV_DIR

__all__ = ["main", "summarise"]

TARGETS = ("delay", "push-bulk", "drain", "drain-async", "server-seq", "server-fetch")
_LINE = re.compile(r":\d+\)$")


def _py_spy() -> Path:
    path = VENV_DIR / "bin" / "py-spy"
    if not path.is_file():
        raise BenchError(f"py-spy is not installed in {VENV_DIR}: run `python -m bench` once")
    return path


def summarise(collapsed: Path, *, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_LINE.sub(")", f) for f in stack.split(";")[1:]]
        for frame in set(frames):
            inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self:"]
    out += [f"  {v / total:6.1%}  {k}" for k, v in own.most_common(top)]
    out += ["", "inclusive:"]
    skip = ("<frozen", "runpy", "threading.py", "click/core.py", "asyncio/runners.py")
    shown = [(k, v) for k, v in inclusive.most_common() if not any(s in k for s in skip)]
    out += [f"  {v / total:6.1%}  {k}" for k, v in shown[:top]]
    return "\n".join(out)


def _record(argv: list[str], out: Path, *, rate: int, gil: bool) -> list[str]:
    cmd = [str(_py_spy()), "record", "-r", str(rate), "-f", "raw", "-o", str(out)]
    return cmd + (["--gil"] if gil else []) + argv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("target", choices=TARGETS)
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--rate", type=int, default=500, help="samples per second")
    parser.add_argument("--all-threads", action="store_true", help="not only the GIL holder")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"profile-{args.target}.txt"
    gil = not args.all_threads
    server = ServerProcess()
    try:
        endpoint = Endpoint.parse(server.url)
        control = ServerControl(endpoint)
        env = child_env({"FAKTORY_URL": server.url})
        if args.target in ("drain", "drain-async"):
            jobtype = "noop" if args.target == "drain" else "noop_async"
            control.fill(args.jobs, jobtype=jobtype, queue="profile")
            worker = [sys.executable, "-m", "kaffi", "worker", "bench.tasks:app"]
            worker += ["--queues", "profile", "--concurrency", "20", "--burst"]
            cmd = _record(["--", *worker], out, rate=args.rate, gil=gil)
            subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, timeout=600)
        elif args.target in ("delay", "push-bulk"):
            op = "delay_single" if args.target == "delay" else "push_bulk"
            code = f"from bench.profile import _client; _client({op!r})"
            child = [sys.executable, "-c", code]
            cmd = _record(["--", *child], out, rate=args.rate, gil=gil)
            subprocess.run(
                [*cmd, server.url, str(args.jobs)],
                cwd=REPO_ROOT,
                env=env,
                capture_output=True,
                timeout=600,
            )
        else:
            spy = subprocess.Popen(
                _record(["--pid", str(server.pid)], out, rate=args.rate, gil=gil),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches before the load starts
            if args.target == "server-seq":
                raw.push_sequential(endpoint, args.jobs)
            else:
                raw.fetch_ack(endpoint, control, args.jobs)
            stop_process(spy, timeout=30, sig=signal.SIGINT)
        control.close()
    finally:
        server.stop()
    if not out.is_file():
        print(f"py-spy wrote no profile to {out}", file=sys.stderr)
        return 1
    print(f"{args.target}: collapsed stacks in {out.relative_to(REPO_ROOT)}")
    print(summarise(out, top=args.top))
    return 0


def _client(op: str) -> None:
    """The profiled child for the client targets: ``op`` from :mod:`bench.kaffi_suite`."""
    url, jobs = sys.argv[1], int(sys.argv[2])
    getattr(kaffi_suite, op)(url, jobs)


if __name__ == "__main__":
    sys.exit(main())
