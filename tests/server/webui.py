"""Helpers of the web UI tests: an HTTP client on the UI, and jobs in every state.

:class:`Http` speaks plain HTTP/1.1 with :mod:`http.client` (no redirects followed, any
``Host``, cookies kept by hand), so the tests see exactly what the UI answers.
:func:`fill` puts jobs in a queue, the retry set, the scheduled set and the dead set
through the work protocol, as workers and clients would.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from kaffi.server import EmbeddedServer
from kaffi.server.web.app import CSRF_COOKIE, CSRF_FIELD
from tests.server.wire import Wire, push_line

_TOKEN = re.compile(rf'name="{CSRF_FIELD}" value="([^"]+)"')


@dataclass
class Answer:
    """One HTTP response: status, headers (lower-case names), body text."""

    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class Http:
    """A plain HTTP client on one server's web UI."""

    def __init__(self, srv: EmbeddedServer, password: str | None = None) -> None:
        parts = urlsplit(srv.web_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.password = password
        self.cookie = ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        password: str | None = None,
    ) -> Answer:
        """Send one request; ``password`` overrides the client's for basic auth."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        sent = {"Host": f"{self.host}:{self.port}"}
        secret = password if password is not None else self.password
        if secret is not None:
            sent["Authorization"] = "Basic " + base64.b64encode(f"u:{secret}".encode()).decode()
        if self.cookie:
            sent["Cookie"] = self.cookie
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        sent.update(headers or {})
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            got = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        cookie = got.get("set-cookie", "")
        if cookie.startswith(f"{CSRF_COOKIE}="):
            self.cookie = cookie.split(";", 1)[0]
        return Answer(response.status, got, text)

    def get(self, path: str, **kw: Any) -> Answer:
        """GET ``path``."""
        return self.request("GET", path, **kw)

    def token(self) -> str:
        """The CSRF token, from the cookie every page sets (GET ``/`` to have it)."""
        self.get("/")
        assert self.cookie.startswith(f"{CSRF_COOKIE}="), "the page set no CSRF cookie"
        return self.cookie.split("=", 1)[1]

    @staticmethod
    def form_token(html: str) -> str:
        """The CSRF token of the first form in a page."""
        found = _TOKEN.search(html)
        assert found is not None, "no form on the page"
        return found.group(1)

    def post(self, path: str, fields: list[tuple[str, str]], *, token: bool = True) -> Answer:
        """POST a form to ``path``; ``token`` adds the page's CSRF field."""
        if token:
            fields = [(CSRF_FIELD, self.token()), *fields]
        return self.request("POST", path, urlencode(fields).encode())


def fill(
    srv: EmbeddedServer,
    *,
    queued: int = 0,
    retries: int = 0,
    scheduled: int = 0,
    dead: int = 0,
    queue: str = "default",
) -> None:
    """Put jobs in every state: ``queued`` waiting in ``queue``, ``retries`` failed once
    (with a backtrace), ``scheduled`` due in a day, ``dead`` (``retry: 1``, failed twice).
    The dead are made first: the server's clock moves forward for their retry."""
    wire = Wire.hello(srv, password=srv.password)
    try:
        for n in range(dead):
            jid = f"jid-dead-{n:06d}"
            wire.send(push_line(jid=jid, queue="dying", jobtype="Doomed", args=[n], retry=1))
            wire.send("FETCH dying")
            assert wire.send(_fail(jid, "RuntimeError", "first")) == ["+OK"]
            srv.advance_clock(120.0)  # the retry falls due
            wire.send("FETCH dying")
            assert wire.send(_fail(jid, "RuntimeError", f"gave up {n}")) == ["+OK"]
        for n in range(retries):
            jid = f"jid-retry-{n:06d}"
            wire.send(push_line(jid=jid, queue="failing", jobtype="Flaky", args=[n, "x" * 10]))
            wire.send("FETCH failing")
            assert wire.send(_fail(jid, "ValueError", f"bad value {n}")) == ["+OK"]
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600 * 24))
        for n in range(scheduled):
            jid = f"jid-later-{n:06d}"
            wire.send(push_line(jid=jid, queue="later", jobtype="Later", args=[n], at=at))
        for n in range(queued):
            wire.send(push_line(jid=f"jid-queued-{n:06d}", queue=queue, jobtype="Add", args=[n, 1]))
    finally:
        wire.close()


def _fail(jid: str, errtype: str, message: str) -> str:
    body = {
        "jid": jid,
        "errtype": errtype,
        "message": message,
        "backtrace": ["app/tasks.py:12 in run", "kaffi/worker/worker.py:300 in perform"],
    }
    return "FAIL " + json.dumps(body)
