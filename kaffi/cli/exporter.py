"""``kaffi exporter``: serve a Faktory server's queue and set sizes to Prometheus.

The work is in :mod:`kaffi.contrib.exporter` (it needs ``kaffi[prometheus]``), imported
inside the command, so ``kaffi --help`` never loads prometheus-client.
"""

from __future__ import annotations

import click

from kaffi.cli import main
from kaffi.cli.common import handle_errors, setting, url_option

__all__ = ["exporter"]

EXPORTER_HELP = """Serve the metrics of a Faktory server at http://HOST:PORT/metrics.

Each scrape asks the server for INFO and QUEUE LATENCY (answers are reused for
--cache-seconds, and never more than one INFO is in flight): faktory_queue_size,
faktory_queue_latency_seconds, faktory_set_size, faktory_processed_total,
faktory_failures_total, faktory_connections, faktory_workers and faktory_up, which is 0
while the server cannot be reached (the exporter keeps serving). Works against Faktory
and `kaffi server` alike. Needs kaffi[prometheus]. Stops on TERM or INT.
"""
LISTEN_HELP = "Where to serve /metrics: HOST:PORT (:PORT alone: 127.0.0.1)."
CACHE_HELP = "Seconds one answer of the server serves scrapes."


@main.command("exporter", help=EXPORTER_HELP)
@url_option
@click.option(
    "--listen",
    default="127.0.0.1:9419",
    show_default=True,
    metavar="HOST:PORT",
    envvar="KAFFI_EXPORTER_LISTEN",
    help=LISTEN_HELP,
)
@setting("--cache-seconds", type=click.FloatRange(min=0), default=1.0, help=CACHE_HELP)
@click.option(
    "--log-level", default="info", show_default=True, metavar="LEVEL", help="debug, info, ..."
)
def exporter(url: str | None, listen: str, cache_seconds: float, log_level: str) -> None:
    with handle_errors():
        from kaffi.cli.common import connection_settings
        from kaffi.contrib.addresses import parse_listen_address
        from kaffi.contrib.exporter import run_exporter
        from kaffi.worker.joblog import configure_logging

        parse_listen_address(listen, what="--listen")
        settings = connection_settings(url)
        configure_logging(log_level, "text")
        run_exporter(settings, listen, cache_seconds=cache_seconds)
