"""Serve the web UI with uvicorn on the event loop the embedded server already runs.

:class:`WebServer` binds its own socket (so port 0 works and the real port is known at
once), then runs uvicorn's startup and shutdown steps itself rather than
``uvicorn.Server.serve``: that one installs signal handlers (the server's owner has its
own) and a 0.1 s tick loop, which the UI does not need (no request limits, no ``Date``
header). uvicorn is told not to configure logging: the process's owner does.

Must never be imported unless the UI is asked for (it imports the ``web`` extra).
"""

from __future__ import annotations

import os
import socket

import uvicorn

from kaffi.server.web.app import WebContext, allowed_hosts_for, create_app

__all__ = ["WebServer"]


class WebServer:
    """The UI's HTTP listener, started and stopped with the embedded server."""

    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self._server: uvicorn.Server | None = None
        self._sockets: list[socket.socket] = []

    async def start(
        self,
        host: str,
        port: int,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> tuple[str, int]:
        """Listen on ``host:port`` (0: a free port), with HTTPS when given the server's
        certificate and key; returns the address really bound. Raises OSError when it
        cannot bind."""
        if self.ctx.password is None:
            self.ctx.allowed_hosts = allowed_hosts_for(host)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(
            create_app(self.ctx),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            interface="asgi3",
            server_header=False,
            date_header=False,
            proxy_headers=False,
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
        )
        try:
            config.load()
        except BaseException:
            sock.close()
            raise
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server = server
        self._sockets = [sock]
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self) -> None:
        """Stop listening and close the UI's connections (a stopped UI is left as it is)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.should_exit = True
        await server.shutdown(sockets=self._sockets)
        self._sockets = []
