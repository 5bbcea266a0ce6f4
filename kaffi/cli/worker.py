"""``kaffi worker APP``: run an App's tasks.

One process by default; ``--processes N`` (or a per-child limit) runs a supervisor with
worker processes (:mod:`kaffi.worker.supervisor`). The worker machinery is imported inside
the command, so ``kaffi --help`` does not pay for asyncio, pydantic or the app.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from kaffi.cli import main
from kaffi.cli.beat import beat_options, make_beat, start_beat_thread
from kaffi.cli.common import handle_errors, log_options, setting, url_option

if TYPE_CHECKING:
    from kaffi.app import App

__all__ = ["worker"]

WORKER_HELP = """Run the tasks of APP, fetching jobs from Faktory.

APP is module:attribute (like myproj.tasks:app), just a module holding exactly one
kaffi.App, or the path of its file (myproj/tasks.py, with :attribute if needed); the
current directory is importable. An app that fails to import is one error line naming
the file and line (--traceback shows your code's frames).

The worker first connects to the server, trying for up to the connect timeout (5 s).
A server it cannot reach then, or a refused password, is one error line and exit
status 1 (with --processes, the supervisor stops the other processes and exits 1 too).
A server lost later is not fatal: the worker reconnects by itself with backoff (at most
5 s apart) and logs the outage once, a reminder every 30 s, and when the server is back.

Signals: TERM/INT shut down (stop fetching, wait up to --timeout for running jobs, FAIL
the rest so Faktory retries them, exit 0; a second INT skips the wait), TSTP quiets
(finish held jobs, fetch no more), TTIN logs every thread's and task's stack.
"""
QUEUES_HELP = (
    "Queues to fetch from: strict order (critical,default) or weighted random order per"
    " fetch (critical:3,default:1)."
)
CONCURRENCY_HELP = "Jobs held at once per process (async jobs on the loop, plain ones in threads)."
PROCESSES_HELP = "Worker processes; more than 1 runs a supervisor that restarts and recycles them."
TIMEOUT_HELP = "Seconds running jobs get to finish at shutdown before they are FAILed for a retry."
BEAT_HELP = "Seconds between heartbeats (at most 60: Faktory forgets a silent worker then)."
LABELS_HELP = "Comma-separated labels shown in the Faktory UI."
WID_HELP = "Worker id (default: random); with --processes, the prefix of each process's wid."
MAX_JOBS_HELP = "Recycle a worker process after this many jobs (runs a supervisor)."
MAX_MEMORY_HELP = "Recycle a worker process whose RSS passes this many MB (runs a supervisor)."
BURST_HELP = "Exit 0 once every listed queue is empty and nothing is running."
HEALTH_HELP = "A file touched after every successful heartbeat (for liveness probes)."
AFFINITY_HELP = (
    "With a supervisor: pin each worker process to one CPU (Linux). auto pins when there"
    " are at least as many processes as usable CPUs; on always; off never."
)
METRICS_HELP = (
    "Serve Prometheus metrics at http://HOST:PORT/metrics (:PORT alone: 127.0.0.1; needs"
    " kaffi[prometheus]). With a supervisor it serves the numbers of all worker processes."
)
METRICS_BUCKETS_HELP = (
    "Upper bounds, in seconds, of the job duration histogram's buckets (like 0.01,0.1,1,10)."
)
TRACEBACK_HELP = "When APP fails to import, print its traceback (your code's frames) too."
RUN_BEAT_HELP = (
    "Also push the App's periodic jobs (as kaffi beat does), in a thread of this process;"
    " with a supervisor, in the supervisor only."
)


@main.command("worker", help=WORKER_HELP)
@click.argument("app")
@click.option(
    "--queues", "-q", default="default", show_default=True, metavar="LIST", help=QUEUES_HELP
)
@setting("--concurrency", "-c", type=click.IntRange(min=1), default=20, help=CONCURRENCY_HELP)
@setting("--processes", "-p", type=click.IntRange(min=1), default=1, help=PROCESSES_HELP)
@setting("--timeout", "-t", type=click.FloatRange(min=0), default=8.0, help=TIMEOUT_HELP)
@setting(
    "--beat-interval",
    type=click.FloatRange(min=0, min_open=True, max=60),
    default=15.0,
    help=BEAT_HELP,
)
@click.option("--labels", "-l", default="", metavar="LIST", help=LABELS_HELP)
@click.option("--wid", default=None, help=WID_HELP)
@url_option
@setting(
    "--max-jobs-per-child",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help=MAX_JOBS_HELP,
)
@setting(
    "--max-memory-per-child",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="MB",
    help=MAX_MEMORY_HELP,
)
@setting(
    "--cpu-affinity", type=click.Choice(["auto", "on", "off"]), default="auto", help=AFFINITY_HELP
)
@click.option("--burst", is_flag=True, help=BURST_HELP)
@click.option("--health-file", default=None, metavar="PATH", help=HEALTH_HELP)
@click.option(
    "--metrics", default=None, metavar="HOST:PORT", envvar="KAFFI_METRICS", help=METRICS_HELP
)
@click.option(
    "--metrics-buckets",
    default=None,
    metavar="LIST",
    envvar="KAFFI_METRICS_BUCKETS",
    help=METRICS_BUCKETS_HELP,
)
@click.option("--beat", "run_beat", is_flag=True, help=RUN_BEAT_HELP)
@beat_options
@log_options
@click.option("--traceback", "show_traceback", is_flag=True, help=TRACEBACK_HELP)
def worker(
    app: str,
    queues: str,
    concurrency: int,
    processes: int,
    timeout: float,
    beat_interval: float,
    labels: str,
    wid: str | None,
    url: str | None,
    max_jobs_per_child: int | None,
    max_memory_per_child: float | None,
    cpu_affinity: str,
    burst: bool,
    health_file: str | None,
    metrics: str | None,
    metrics_buckets: str | None,
    run_beat: bool,
    lookahead: float,
    margin: float,
    log_level: str,
    log_format: str,
    show_traceback: bool,
) -> None:
    with handle_errors(), contextlib.ExitStack() as cleanup:
        from kaffi.worker.joblog import configure_logging
        from kaffi.worker.worker import Worker

        configure_logging(log_level, log_format)
        application = _load(app, show_traceback)
        options: dict[str, Any] = {
            "queues": queues,
            "concurrency": concurrency,
            "timeout": timeout,
            "beat_interval": beat_interval,
            "labels": [label.strip() for label in labels.split(",") if label.strip()],
            "wid": wid,
            "url": url,
            "burst": burst,
            "health_file": health_file,
        }
        supervised = (
            processes > 1 or max_jobs_per_child is not None or max_memory_per_child is not None
        )
        on_child_exit = None
        if metrics is not None:
            from kaffi.contrib.prometheus import start_worker_metrics

            options["events"], on_child_exit = start_worker_metrics(
                cleanup, metrics, metrics_buckets, supervised=supervised
            )
        # The scheduler runs in this process, beside the worker or the supervisor, never
        # in the supervisor's children: one scheduler per `kaffi worker --beat`.
        stop_beat = (
            start_beat_thread(make_beat(application, url, lookahead, margin))
            if run_beat
            else _nothing_to_stop
        )
        if supervised:
            from kaffi.worker.lifecycle import check_memory_limit
            from kaffi.worker.supervisor import Supervisor

            # Validate every option here, so a mistake is one line, not N dying children.
            Worker(application, **options).settings  # noqa: B018
            if max_memory_per_child is not None:
                # This process has the app loaded, as a child will when it starts.
                check_memory_limit(max_memory_per_child, "--max-memory-per-child")
            options.update(max_jobs=max_jobs_per_child, max_memory_mb=max_memory_per_child)
            code = Supervisor(
                app,
                processes=processes,
                worker_options=options,
                log_level=log_level,
                log_format=log_format,
                cpu_affinity=cpu_affinity,
                on_child_exit=on_child_exit,
            ).run()
            sys.stdout.flush()
            stop_beat()
            sys.exit(code)
        runner = Worker(application, **options)
        runner.work()
        stop_beat()
        if runner.abandoned_threads:
            # Jobs FAILed at shutdown may still be running in threads the interpreter
            # would wait for forever: the work is given back, so leave now.
            cleanup.close()
            logging.shutdown()
            sys.stdout.flush()
            os._exit(0)


def _load(spec: str, show_traceback: bool) -> App:
    """The App of ``spec``; with ``--traceback``, an import failure prints the user's own
    frames before the one error line."""
    from kaffi.errors import AppImportError
    from kaffi.worker.loader import load_app

    try:
        return load_app(spec)
    except AppImportError as exc:
        if show_traceback:
            click.echo(exc.user_traceback.rstrip("\n"), err=True)
        raise


def _nothing_to_stop() -> None:
    """What stops the scheduler when ``--beat`` was not given."""
