"""Every example in examples/ runs to completion as a subprocess, the way a user runs it.

Each example starts its own embedded server (FAKTORY_URL is removed from its environment)
and must stop by itself; a hung example fails the test at its timeout instead of hanging
the suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(
    name: str, timeout: float = 50, args: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FAKTORY_URL", "FAKTORY_PROVIDER")}
    env["PYTHONUNBUFFERED"] = "1"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (
        f"{name} exited {result.returncode}\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def seconds_at(line_pattern: str, out: str) -> float:
    """The ``[  1.2s]`` stamp of the first output line matching ``line_pattern``."""
    match = re.search(r"\[\s*([\d.]+)s\] " + line_pattern, out)
    assert match is not None, out
    return float(match.group(1))


def test_every_example_has_a_smoke_test() -> None:
    tested = {
        "quickstart.py",
        "async_tasks.py",
        "asyncio_producer.py",
        "threaded_web_producer.py",
        "middleware_pool.py",
        "cpu_bound.py",
        "cross_language.py",
        "fastapi_service.py",
        "periodic.py",
        "enterprise_batch.py",
    }
    examples = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert examples == tested


def test_quickstart() -> None:
    out = run_example("quickstart.py").stdout
    assert re.search(r"add\(2, 3\) = 5", out)
    assert "fetch_title('https://example.com') done" in out
    assert "flaky(1042) attempt 1: raising ConnectionResetError" in out
    assert "flaky is in the retries set" in out or "flaky failed" in out
    assert "flaky(1042) attempt 2: succeeded" in out
    assert "remind('stand up') ran" in out
    assert out.rstrip().endswith("server stopped, bye")
    # the scheduled job ran after its countdown, not at once
    remind_at = seconds_at(r"remind\('stand up'\) ran", out)
    pushed_at = seconds_at(r"pushed remind", out)
    assert remind_at - pushed_at >= 2.5


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("async_tasks.py", ["pushed 20 download jobs", "worker ran 20 pages"]),
        (
            "asyncio_producer.py",
            ["30 concurrent requests each enqueued a job", "burst worker sent 30 receipts"],
        ),
        (
            "threaded_web_producer.py",
            ["8 sign-ups answered 202", "burst worker sent 8 welcome mails"],
        ),
    ],
)
def test_producer_and_async_examples(name: str, expected: list[str]) -> None:
    out = run_example(name).stdout
    for line in expected:
        assert line in out


def test_fastapi_service() -> None:
    out = run_example("fastapi_service.py").stdout
    for name in ("notes.txt", "poem.txt", "empty.txt"):
        assert f"POST /uploads {name} -> 202, job " in out
    assert re.search(r"notes\.txt: queued 0% -> .*done 100%; 200 words", out)
    assert re.search(r"poem\.txt: queued 0% -> .*done 100%; 1080 words", out)
    assert "empty.txt: queued 0% -> done 100%; 0 words" in out
    assert out.rstrip().endswith("all 3 uploads processed; service stopped")


def test_periodic() -> None:
    out = run_example("periodic.py").stdout
    assert re.search(r"nightly_report next runs at \d{4}-\d\d-\d\d 02:30 CES?T", out)
    assert "two schedulers and a worker started" in out
    assert (
        len(re.findall(r"heartbeat\('billing'\) for \S+Z   jid heartbeat@\d{8}T\d{6}Z~", out)) >= 4
    )
    counted = re.search(r"(\d+) heartbeats, (\d+) runs: each ran once", out)
    assert counted is not None, out
    assert int(counted.group(1)) == int(counted.group(2)) >= 4
    assert out.rstrip().endswith("server stopped, bye")


def test_enterprise_batch() -> None:
    out = run_example("enterprise_batch.py").stdout
    committed = re.search(r"committed: batch (b-\S+): 4 jobs, 4 pending, 0 failed;", out)
    assert committed is not None, out
    bid = committed.group(1)
    for name in ("customers.csv", "orders.csv", "products.csv"):
        assert f"import_file('{name}') imported" in out
        assert f"(batch {bid})" in out
    assert f"verify_index(465) checked the index   (batch {bid})" in out
    assert re.search(r"progress of build_index: working \d+% (reading|sorting|writing)", out)
    assert "progress of build_index: success 100% done" in out
    # complete first, success after it, each once.
    cleanup_at = seconds_at(r"cleanup: every job of batch", out)
    report_at = seconds_at(r"report: 'nightly import' succeeded, 5 jobs, 0 failed", out)
    assert cleanup_at <= report_at
    assert out.count("(complete callback)") == 1
    assert out.count("(success callback)") == 1
    assert (
        f"finished: batch {bid}: 5 jobs, 0 pending, 0 failed; complete callback done,"
        " success callback done"
    ) in out
    assert out.rstrip().endswith("server stopped, bye")


def test_middleware_pool() -> None:
    out = run_example("middleware_pool.py").stdout
    assert "the pool lent 6 connections, one per job" in out
    assert "timing middleware saw 6 jobs" in out
    assert re.search(r"\s/\s+3 visits", out)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_cpu_bound() -> None:
    # 40 jobs of about 15 ms: enough for both drains to show, a third of the CPU time.
    out = run_example("cpu_bound.py", timeout=140, args=("40",)).stdout
    assert "40 jobs of count_primes(20000)" in out
    assert "--processes 1 drained them in" in out
    assert "--processes 2 drained them in" in out


@pytest.mark.compat
@pytest.mark.slow
@pytest.mark.timeout(330)
@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm"
)
def test_cross_language() -> None:
    out = run_example("cross_language.py", timeout=320).stdout
    if out.startswith("skipped:") or "\nskipped:" in out:
        pytest.skip(out.strip().splitlines()[-1])
    assert "kaffi worker ran add_numbers(19, 23) = 42" in out
    assert 'node worker ran greet_from_python("Ada", "Python")' in out
    assert "both directions worked" in out
