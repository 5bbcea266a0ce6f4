"""The web UI's ASGI app: Starlette routes with Jinja2 templates over the server's state.

:func:`create_app` builds it for one :class:`~kaffi.server.core.ServerCore`; every handler
is ``async`` so it runs on the server's own event loop thread, reading and changing the
core between two protocol commands (never from a thread pool), and asks the network layer
to commit the journal and send what the change produced (``WebContext.changed``).

The paths are those of Faktory 1.10.0's UI. Security, as on the work port:

- with a server password, every request needs HTTP basic auth (any user name, the
  password), as Faktory does;
- without one, the UI only listens on loopback (checked by :class:`EmbeddedServer`) and
  only answers requests whose ``Host`` is a loopback name or the address it listens on, so
  a page elsewhere cannot reach it through DNS rebinding;
- every change is a POST carrying this process's secret CSRF token both in a hidden form
  field and in a ``SameSite=Strict`` cookie; anything else gets a 403 page;
- a Content-Security-Policy with no ``unsafe-inline``: the pages have no inline script or
  style, the chart's script and the stylesheet are files of this package.

Bad input (unknown queue, job key, worker, page number) gets a 404 or 400 page.

Must never be imported by ``import kaffi``, the client or the worker: it needs the ``web``
extra. Must never change the core other than through :mod:`kaffi.server.web.state`.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaffi._version import __version__
from kaffi.server.core import ServerCore
from kaffi.server.web import state
from kaffi.server.web.state import BadRequest, NotFound, WebInputError

__all__ = ["WebContext", "create_app", "CSP", "CSRF_COOKIE", "CSRF_FIELD", "HISTORY_DAYS"]

log = logging.getLogger("kaffi.server.web")

_HERE = Path(__file__).parent
#: The Content-Security-Policy of every response: nothing inline, nothing from elsewhere.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CSRF_COOKIE = "kaffi_csrf"
CSRF_FIELD = "csrf_token"
#: Days of history the dashboard shows unless ``?days=`` says otherwise, and the most.
HISTORY_DAYS = 7
_HISTORY_MAX = 180
_FORM_MAX = 256 * 1024
_MESSAGES_KEPT = 64
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass
class WebContext:
    """What the UI needs from the server it belongs to."""

    core: ServerCore
    #: Called after every change: commit the journal and send what the change produced
    #: (jobs handed to waiting FETCHes), as after a command.
    changed: Callable[[], None]
    password: str | None = None
    #: ``days -> [(day, processed, failed)]`` from the data file; None in memory mode.
    history: Callable[[int], list[tuple[str, int, int]]] | None = None
    #: Host names the UI answers to (without a password); None: any.
    allowed_hosts: frozenset[str] | None = None
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    _messages: OrderedDict[str, str] = field(default_factory=OrderedDict)

    def remember(self, text: str) -> str:
        """Keep a message to show after the redirect that follows an action; returns its
        id (ids, not texts, go in URLs, so a link cannot make the UI say anything)."""
        ident = secrets.token_urlsafe(8)
        self._messages[ident] = text
        while len(self._messages) > _MESSAGES_KEPT:
            self._messages.popitem(last=False)
        return ident

    def message(self, ident: str | None) -> str | None:
        """The message kept under ``ident``, if any."""
        return self._messages.get(ident) if ident else None


def allowed_hosts_for(host: str) -> frozenset[str]:
    """The ``Host`` names a password-less UI listening on ``host`` answers to."""
    return _LOOPBACK_NAMES | {host.strip("[]").lower()}


def _host_name(value: str) -> str:
    """The host part of a ``Host`` header (``[::1]:7420`` -> ``::1``)."""
    return (urlsplit(f"//{value}").hostname or "").lower()


class _Guard:
    """ASGI middleware around the whole app: Host check, basic auth, security headers."""

    def __init__(self, app: ASGIApp, ctx: WebContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["Content-Security-Policy"] = CSP
                out["X-Content-Type-Options"] = "nosniff"
                out["X-Frame-Options"] = "DENY"
                out["Referrer-Policy"] = "same-origin"
                out.setdefault("Cache-Control", "no-store")
            await send(message)

        allowed = self.ctx.allowed_hosts
        if allowed is not None and _host_name(headers.get("host", "")) not in allowed:
            response: Response = Response(
                "unknown Host: open the UI by its loopback address\n", 400, media_type="text/plain"
            )
            await response(scope, receive, send_with_headers)
            return
        if self.ctx.password is not None and not self._authorized(headers):
            response = Response(
                "kaffi server: password needed\n",
                401,
                headers={"WWW-Authenticate": 'Basic realm="kaffi", charset="UTF-8"'},
                media_type="text/plain",
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _authorized(self, headers: Headers) -> bool:
        scheme, _, encoded = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, _, password = decoded.partition(":")
        assert self.ctx.password is not None
        return hmac.compare_digest(password.encode(), self.ctx.password.encode())


def _iso(seconds: float | None) -> str:
    if seconds is None:
        return ""
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(seconds: float) -> str:
    """A duration in words: ``42s``, ``3m 5s``, ``2h 10m``, ``4d 1h``."""
    total = int(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _environment(ctx: WebContext) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )

    def relative(seconds: float | None) -> str:
        if seconds is None:
            return ""
        delta = seconds - ctx.core.clock.now()
        return f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"

    env.filters["iso"] = _iso
    env.filters["relative"] = relative
    env.filters["span"] = _span
    env.filters["quote"] = lambda text: quote(str(text), safe="")
    env.filters["kb"] = lambda kb: f"{kb / 1024:.1f} MB" if kb else ""
    env.globals["version"] = __version__
    env.globals["csrf_field"] = CSRF_FIELD
    # Globals, not render values: the form macros imported from macros.html see only these.
    env.globals["csrf_token"] = ctx.csrf_token
    return env


def create_app(ctx: WebContext) -> ASGIApp:
    """The web UI for ``ctx.core``, as an ASGI app (the guard around a Starlette app)."""
    env = _environment(ctx)
    static = {
        path.name: (path.read_bytes(), _STATIC_TYPES[path.suffix])
        for path in (_HERE / "static").iterdir()
        if path.suffix in _STATIC_TYPES
    }
    core = ctx.core

    def render(request: Request, template: str, status: int = 200, **values: Any) -> Response:
        values.setdefault("message", ctx.message(request.query_params.get("msg")))
        html = env.get_template(template).render(
            counts=state.dashboard_counts(core),
            now=core.clock.now(),
            path=request.url.path,
            **values,
        )
        response = HTMLResponse(html, status)
        response.set_cookie(CSRF_COOKIE, ctx.csrf_token, httponly=True, samesite="strict", path="/")
        return response

    async def form(request: Request) -> dict[str, list[str]]:
        """The POSTed form, once its CSRF token (field and cookie) proved it came from a
        page of this UI; raises HTTPException 403 otherwise."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > _FORM_MAX:
            raise HTTPException(413, "form too large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _FORM_MAX:
                raise HTTPException(413, "form too large")
        try:
            fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2000)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the form is not URL-encoded UTF-8") from None
        sent = (fields.get(CSRF_FIELD) or [""])[0]
        cookie = request.cookies.get(CSRF_COOKIE, "")
        token = ctx.csrf_token.encode()
        field_ok = hmac.compare_digest(sent.encode(), token)
        if not (field_ok and hmac.compare_digest(cookie.encode(), token)):
            raise HTTPException(
                403, "the form's CSRF token is missing or wrong: reload the page and try again"
            )
        return fields

    def one(fields: dict[str, list[str]], name: str) -> str:
        values = fields.get(name)
        if not values or not values[0]:
            raise BadRequest(f"the form has no {name}")
        return values[0]

    def done(location: str, text: str) -> Response:
        ctx.changed()
        return RedirectResponse(f"{location}?msg={ctx.remember(text)}", status_code=303)

    # -- pages ----------------------------------------------------------------------------

    async def dashboard(request: Request) -> Response:
        days_text = request.query_params.get("days", str(HISTORY_DAYS))
        if not days_text.isdigit() or not 1 <= int(days_text) <= _HISTORY_MAX:
            raise BadRequest(f"days must be a number from 1 to {_HISTORY_MAX}")
        days = int(days_text)
        history = ctx.history(days) if ctx.history is not None else None
        peak = max((max(p, f) for _, p, f in history), default=0) if history else 0
        return render(
            request,
            "dashboard.html",
            nav="dashboard",
            title="Dashboard",
            history=history,
            history_peak=max(peak, 1),
            days=days,
            day_choices=(7, 30, 90),
        )

    async def busy(request: Request) -> Response:
        if request.method == "POST":
            fields = await form(request)
            text = state.busy_action(core, one(fields, "action"), one(fields, "wid"))
            return done("/busy", text)
        return render(
            request,
            "busy.html",
            nav="busy",
            title="Busy",
            workers=state.busy_workers(core),
            jobs=state.busy_jobs(core),
        )

    async def queues(request: Request) -> Response:
        return render(
            request, "queues.html", nav="queues", title="Queues", queues=state.queue_rows(core)
        )

    async def queue(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "POST":
            fields = await form(request)
            text = state.queue_action(core, name, one(fields, "action"), fields.get("key", []))
            target = "/queues" if fields.get("back") == ["queues"] else f"/queues/{quote(name)}"
            return done(target, text)
        page = state.queue_page(core, name, state.parse_page(request.query_params.get("page")))
        return render(
            request,
            "queue.html",
            nav="queues",
            title=f"Queue {name}",
            queue=next(q for q in state.queue_rows(core) if q.name == name),
            page=page,
        )

    def set_pages(path: str, title: str) -> list[Route]:
        async def listing(request: Request) -> Response:
            if request.method == "POST":
                fields = await form(request)
                text = state.set_action(
                    core,
                    path,
                    one(fields, "action"),
                    fields.get("key", []),
                    every=fields.get("all") == ["1"],
                )
                return done(f"/{path}", text)
            page = state.set_page(core, path, state.parse_page(request.query_params.get("page")))
            return render(
                request,
                "set.html",
                nav=path,
                title=title,
                set_path=path,
                actions=state.SET_ACTIONS[path],
                page=page,
            )

        async def job(request: Request) -> Response:
            key = request.path_params["key"]
            if request.method == "POST":
                fields = await form(request)
                state.set_entry(core, path, key)
                text = state.set_action(core, path, one(fields, "action"), [key], every=False)
                return done(f"/{path}", text)
            row = state.set_entry(core, path, key)
            return render(
                request,
                "job.html",
                nav=path,
                title=f"{title}: {row.jid}",
                set_path=path,
                set_title=title,
                actions=state.SET_ACTIONS[path],
                job=row,
            )

        return [
            Route(f"/{path}", listing, methods=["GET", "POST"]),
            Route(f"/{path}/{{key}}", job, methods=["GET", "POST"]),
        ]

    async def stats(request: Request) -> Response:
        return JSONResponse(core.info())

    async def health(request: Request) -> Response:
        info = core.info()
        return JSONResponse({"now": info["now"], "server": info["server"]})

    async def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            raise NotFound("no such file")
        body, media_type = found
        return Response(body, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    # -- errors ---------------------------------------------------------------------------

    def error_page(request: Request, status: int, text: str) -> Response:
        return render(
            request, "error.html", status, nav="", title=f"Error {status}", error=text, code=status
        )

    async def input_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, WebInputError)
        return error_page(request, exc.status, str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        texts = {404: "There is no such page.", 405: "This page does not take that method."}
        detail = exc.detail if exc.detail and exc.status_code in (403, 413) else None
        return error_page(request, exc.status_code, detail or texts.get(exc.status_code, ""))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("web UI error on %s", request.url.path, exc_info=exc)
        return error_page(request, 500, "Something went wrong; the server log has the details.")

    routes = [
        Route("/", dashboard),
        Route("/busy", busy, methods=["GET", "POST"]),
        Route("/queues", queues),
        Route("/queues/{name}", queue, methods=["GET", "POST"]),
        *set_pages("retries", "Retries"),
        *set_pages("scheduled", "Scheduled"),
        *set_pages("morgue", "Dead"),
        Route("/stats", stats),
        Route("/health", health),
        Route("/static/{name}", static_file),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            WebInputError: input_error,
            HTTPException: http_error,
            Exception: server_error,
        },
    )
    return _Guard(app, ctx)
