"""``kaffi server``: run the embedded Faktory-compatible server, or signal one of its workers.

``kaffi server`` listens (127.0.0.1:7419 by default), prints where and where its data
lives, and stops cleanly on SIGINT/SIGTERM. With ``--quiet-worker WID`` or
``--terminate-worker WID`` it does not start a server: it connects to the one at
``--url`` (or ``--bind``) and asks that worker to quiet or terminate, which the worker
learns from the reply to its next BEAT (kaffi's ``KAFFI QUIET|TERMINATE wid`` admin
command, which real Faktory does not have).

The web UI (Faktory's, on the port after ``--bind``'s: 7420 by default) starts with the
server when the ``web`` extra is installed; without it the server says in one line how to
get it and runs without.

``--enterprise`` adds the Faktory Enterprise features the server implements, and
``--throttles FILE`` (Enterprise only) its queue throttles from a ``throttles.toml``.

The server's modules are imported inside the command, so ``kaffi --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from kaffi.cli import main
from kaffi.cli.common import fail, handle_errors

if TYPE_CHECKING:
    from kaffi.server import EmbeddedServer

__all__ = ["server_command", "default_data_path", "DEFAULT_BIND"]

BIND_HELP = "Address to listen on, HOST:PORT. Non-loopback addresses need --password."
DATA_HELP = (
    "SQLite file to keep jobs in (created if missing). Default: a per-user file for each"
    " bind address."
)
MEMORY_HELP = "Keep everything in memory: nothing survives a restart."
PASSWORD_HELP = "Password clients must send (also read from FAKTORY_PASSWORD)."
TLS_CERT_HELP = "PEM certificate (chain) to serve TLS with; needs --tls-key."
TLS_KEY_HELP = "PEM private key of --tls-cert."
LOG_LEVEL_HELP = "How much to log: debug, info, warning or error."
QUIET_HELP = "Do not serve: ask worker WID of the running server to quiet, then exit."
TERMINATE_HELP = "Do not serve: ask worker WID of the running server to terminate, then exit."
FETCH_HOLD_HELP = (
    "Seconds a FETCH on empty queues waits for a job before the server answers none "
    "(Faktory's 2 s; a test server can answer sooner)."
)
URL_HELP = "With --quiet-worker/--terminate-worker: the server's URL (default: from --bind)."
WEB_HELP = (
    "Address of the web UI, HOST:PORT (default: --bind's host, the port after --bind's). "
    "Non-loopback addresses need --password."
)
NO_WEB_HELP = "Do not serve the web UI."
ENTERPRISE_HELP = (
    "Also implement Faktory Enterprise's unique jobs, expiring jobs, batches, TRACK "
    "(progress) and queue throttles (--throttles); their state is stored with --data like "
    "the jobs. Without it the server answers as open-source Faktory."
)
THROTTLES_HELP = (
    "With --enterprise: Faktory Enterprise's throttles.toml, limiting the jobs of a queue "
    "in flight ([throttles] queue = { concurrency = N, timeout = SECONDS } or "
    "{ worker = N, timeout = SECONDS }); also read from KAFFI_THROTTLES."
)
#: How EmbeddedServer's error starts when the UI's address cannot be bound.
WEB_START_FAILED = "cannot serve the web UI"


DEFAULT_BIND = "127.0.0.1:7419"


def default_data_path(host: str = "127.0.0.1", port: int = 7419) -> Path:
    """The data file of a server bound to ``host:port`` when no ``--data`` is given:
    ``$XDG_DATA_HOME/kaffi/server.sqlite3`` for the default 127.0.0.1:7419 and
    ``server-HOST-PORT.sqlite3`` beside it for any other address (``~/.local/share`` by
    default; on Windows ``%LOCALAPPDATA%``). One file per address, because a data file
    holds one server: two servers on two ports would otherwise lock each other out."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    if (host, port) == ("127.0.0.1", 7419):
        return base / "kaffi" / "server.sqlite3"
    safe_host = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
    return base / "kaffi" / f"server-{safe_host}-{port}.sqlite3"


@main.command("server", short_help="Run kaffi's embedded Faktory-compatible server.")
@click.option("--bind", default=DEFAULT_BIND, show_default=True, help=BIND_HELP)
@click.option("--data", type=click.Path(dir_okay=False, path_type=Path), help=DATA_HELP)
@click.option("--memory", is_flag=True, help=MEMORY_HELP)
@click.option("--password", envvar="FAKTORY_PASSWORD", default=None, help=PASSWORD_HELP)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help=TLS_CERT_HELP)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help=TLS_KEY_HELP)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help=LOG_LEVEL_HELP,
)
@click.option(
    "--fetch-hold",
    type=float,
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help=FETCH_HOLD_HELP,
)
@click.option("--quiet-worker", "quiet_wid", metavar="WID", help=QUIET_HELP)
@click.option("--terminate-worker", "terminate_wid", metavar="WID", help=TERMINATE_HELP)
@click.option("--url", default=None, metavar="URL", help=URL_HELP)
@click.option("--web", default=None, metavar="HOST:PORT", help=WEB_HELP)
@click.option("--no-web", is_flag=True, help=NO_WEB_HELP)
@click.option("--enterprise", is_flag=True, help=ENTERPRISE_HELP)
@click.option(
    "--throttles",
    type=click.Path(path_type=Path),
    envvar="KAFFI_THROTTLES",
    metavar="FILE",
    help=THROTTLES_HELP,
)
def server_command(
    bind: str,
    data: Path | None,
    memory: bool,
    password: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    log_level: str,
    fetch_hold: float,
    quiet_wid: str | None,
    terminate_wid: str | None,
    url: str | None,
    web: str | None,
    no_web: bool,
    enterprise: bool,
    throttles: Path | None,
) -> None:
    """Run kaffi's embedded Faktory-compatible server (for development, CI and tests;
    use the real Faktory in production)."""
    if quiet_wid or terminate_wid:
        if quiet_wid and terminate_wid:
            fail("give --quiet-worker or --terminate-worker, not both")
        wid = quiet_wid or terminate_wid or ""
        state = "QUIET" if quiet_wid else "TERMINATE"
        _signal_worker(url or _url_from_bind(bind, password, tls_cert), state, wid)
        return
    if data is not None and memory:
        fail("give --data or --memory, not both")
    if (tls_cert is None) != (tls_key is None):
        fail("TLS needs both --tls-cert and --tls-key")
    if web is not None and no_web:
        fail("give --web or --no-web, not both")
    if throttles is not None and not enterprise:
        source = click.get_current_context().get_parameter_source("throttles")
        given = (
            "KAFFI_THROTTLES is set"
            if source is ParameterSource.ENVIRONMENT
            else "--throttles is given"
        )
        fail(f"{given} but --enterprise is not: queue throttles are a Faktory Enterprise feature")
    from kaffi.server import EmbeddedServer
    from kaffi.server.embedded import parse_bind
    from kaffi.server.web import MISSING_EXTRA, web_available

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with handle_errors():
        host, port = parse_bind(bind)
    if not memory and data is None:
        data = default_data_path(host, port)
    _raise_file_limit()
    web_by_default = web is None
    if no_web:
        web = None
    elif not web_available():
        click.echo(f"kaffi server: no web UI: {MISSING_EXTRA}", err=True)
        web = None
    elif web is None:
        web = _web_address(host, port)

    def make(web: str | None) -> EmbeddedServer:
        with handle_errors():
            return EmbeddedServer(
                bind,
                data=data,
                password=password,
                tls_cert=tls_cert,
                tls_key=tls_key,
                fetch_hold=fetch_hold,
                web=web,
                enterprise=enterprise,
                throttles=throttles,
            )

    server = make(web)
    fallback = make(None) if web is not None and web_by_default else None
    asyncio.run(_serve(server, data, fallback))


async def _serve(server: object, data: Path | None, fallback: object | None) -> None:
    """Start ``server`` and serve until SIGINT/SIGTERM. When the UI's default address is
    taken, ``fallback`` (the same server without the UI) starts instead, with a warning:
    a busy port 7420 must not keep the work server from starting."""
    from kaffi.errors import ConfigurationError
    from kaffi.server import EmbeddedServer

    assert isinstance(server, EmbeddedServer)
    try:
        await server.start_async()
    except ConfigurationError as exc:
        if fallback is None or not str(exc).startswith(WEB_START_FAILED):
            fail(str(exc))
        assert isinstance(fallback, EmbeddedServer)
        click.echo(f"kaffi server: no web UI: {exc} (choose one with --web HOST:PORT)", err=True)
        server = fallback
        with handle_errors():
            await server.start_async()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # The handlers go in before the "listening" line: whoever reads that line (a test, a
    # supervisor) may signal at once, and must get a clean stop, not click's "Aborted!".
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))
    where = f"data in {data}" if data is not None else "in memory (nothing is kept)"
    scheme = "tcp+tls" if server.tls_cert else "tcp"
    click.echo(f"kaffi server listening on {scheme}://{server.host}:{server.port}, {where}")
    if server.web_port:
        click.echo(f"kaffi web UI on {server.web_url}")
    click.echo("Press Ctrl-C to stop.")
    try:
        await stop.wait()
    finally:
        await server.stop_async()
    click.echo("kaffi server stopped.")


def _raise_file_limit() -> None:
    """Make room for the server's 2000 connections when the soft limit is lower (a
    common default is 1024 open files); never above the hard limit."""
    try:
        import resource
    except ImportError:  # not on Windows
        return
    from kaffi.server.embedded import DEFAULT_MAX_CONNECTIONS

    wanted = DEFAULT_MAX_CONNECTIONS + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return


def _web_address(host: str, port: int) -> str:
    """The UI's default address: --bind's host, the next port (Faktory: 7419 -> 7420);
    --bind's port 0 (any free port) gives port 0 too."""
    web_port = port + 1 if 0 < port < 65535 else 0
    return f"[{host}]:{web_port}" if ":" in host else f"{host}:{web_port}"


def _url_from_bind(bind: str, password: str | None, tls_cert: str | None) -> str:
    from urllib.parse import quote

    from kaffi.server.embedded import parse_bind

    with handle_errors():
        host, port = parse_bind(bind)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    auth = f":{quote(password, safe='')}@" if password else ""
    scheme = "tcp+tls" if tls_cert else "tcp"
    return f"{scheme}://{auth}{host}:{port}"


def _signal_worker(url: str, state: str, wid: str) -> None:
    from kaffi.client.config import resolve_settings
    from kaffi.client.connection import Connection
    from kaffi.protocol.commands import decode_ok, encode_line

    with handle_errors():
        settings = resolve_settings(url)
        conn = Connection.open(settings, hostname=socket.gethostname())
        try:
            decode_ok(conn.request(encode_line("KAFFI", f"{state} {wid}")), f"KAFFI {state}")
        finally:
            conn.close()
    click.echo(f"asked worker {wid} to {state.lower()}; it will see it at its next BEAT")
