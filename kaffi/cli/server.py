"""``kaffi server``: run the embedded Faktory-compatible server, or signal one of its workers.

``kaffi server`` listens (127.0.0.1:7419 by default), prints where and where its data
lives, and stops cleanly on SIGINT/SIGTERM. With ``--quiet-worker WID`` or
``--terminate-worker WID`` it does not start a server: it connects to the one at
``--url`` (or ``--bind``) and asks that worker to quiet or terminate, which the worker
learns from the reply to its next BEAT (kaffi's ``KAFFI QUIET|TERMINATE wid`` admin
command, which real Faktory does not have).

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

import click

from kaffi.cli import main
from kaffi.cli.common import fail, handle_errors

__all__ = ["server_command", "default_data_path"]

BIND_HELP = "Address to listen on, HOST:PORT. Non-loopback addresses need --password."
DATA_HELP = "SQLite file to keep jobs in (created if missing). Default: a per-user file."
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


def default_data_path() -> Path:
    """``$XDG_DATA_HOME/kaffi/server.sqlite3`` (``~/.local/share`` by default; on Windows
    ``%LOCALAPPDATA%``)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "kaffi" / "server.sqlite3"


@main.command("server")
@click.option("--bind", default="127.0.0.1:7419", show_default=True, help=BIND_HELP)
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
    from kaffi.server import EmbeddedServer

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not memory and data is None:
        data = default_data_path()
    _raise_file_limit()
    with handle_errors():
        server = EmbeddedServer(
            bind,
            data=data,
            password=password,
            tls_cert=tls_cert,
            tls_key=tls_key,
            fetch_hold=fetch_hold,
        )
    asyncio.run(_serve(server, data))


async def _serve(server: object, data: Path | None) -> None:
    from kaffi.server import EmbeddedServer

    assert isinstance(server, EmbeddedServer)
    with handle_errors():
        await server.start_async()
    where = f"data in {data}" if data is not None else "in memory (nothing is kept)"
    scheme = "tcp+tls" if server.tls_cert else "tcp"
    click.echo(f"kaffi server listening on {scheme}://{server.host}:{server.port}, {where}")
    click.echo("Press Ctrl-C to stop.")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(stop.set))
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
