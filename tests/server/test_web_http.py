"""The web UI over plain HTTP: pages, JSON, pagination, bad input, CSRF, auth, options.

Every test runs a real EmbeddedServer with its UI on a free loopback port and talks to it
with :class:`tests.server.webui.Http` (no browser: tests/server/test_web_browser.py drives
the same pages in Chromium).
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from kaffi.errors import ConfigurationError
from kaffi.server import EmbeddedServer
from kaffi.server.core import ServerCore
from kaffi.server.web.app import CSP, CSRF_FIELD
from tests.reliability import certs
from tests.server.webui import Http, fill
from tests.server.wire import Wire

_PAGES = ["/", "/busy", "/queues", "/queues/default", "/retries", "/scheduled", "/morgue"]


@pytest.fixture
def web() -> Iterator[EmbeddedServer]:
    with EmbeddedServer(web="127.0.0.1:0") as server:
        yield server


def _rows(html: str) -> int:
    """How many job rows (with a selection box) a list page shows."""
    return len(re.findall(r'<input type="checkbox" name="key"', html))


def _paused(core: ServerCore, name: str) -> bool:
    return core.queues[name].paused


def _keys(html: str) -> list[str]:
    return re.findall(r'<input type="checkbox" name="key" value="([^"]+)"', html)


def test_every_page_renders_with_a_strict_csp(web: EmbeddedServer) -> None:
    fill(web, queued=3, retries=2, scheduled=2, dead=1)
    http = Http(web)
    for path in _PAGES:
        page = http.get(path)
        assert page.status == 200, (path, page.body[:300])
        assert page.headers["content-security-policy"] == CSP
        assert "unsafe-inline" not in CSP
        assert page.headers["x-frame-options"] == "DENY"
        # Nothing inline that the policy would block: every script is a file, no styles.
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.body), path
        assert " style=" not in page.body, path
        assert "<style" not in page.body, path
    retry_key = _keys(http.get("/retries").body)[0]
    job = http.get(f"/retries/{quote(retry_key, safe='')}")
    assert job.status == 200
    assert "bad value" in job.body
    assert "app/tasks.py:12 in run" in job.body
    assert "jid-retry-" in job.body
    dashboard = http.get("/").body
    for label, number in (("processed", 4), ("failed", 4), ("retries", 2), ("dead", 1)):
        assert f'data-stat="{label}">{number}<' in dashboard, label
    assert http.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")


def test_stats_is_the_info_document_and_health_its_server_block(web: EmbeddedServer) -> None:
    fill(web, queued=2, retries=1)
    http = Http(web)
    stats = http.get("/stats")
    assert stats.status == 200
    assert stats.headers["content-type"] == "application/json"
    doc = stats.json()
    info = web.info()
    assert list(doc) == list(info)
    assert list(doc["faktory"]) == list(info["faktory"])
    assert list(doc["server"]) == list(info["server"])
    assert doc["faktory"]["queues"] == {"default": 2, "failing": 0}
    assert doc["faktory"]["sets"]["retries"] == 1
    assert doc["faktory"]["total_failures"] == 1
    health = http.get("/health").json()
    assert set(health) == {"now", "server"}
    assert health["server"]["faktory_version"] == "1.10.0"


def test_queue_pages_hold_25_jobs_in_order(web: EmbeddedServer) -> None:
    fill(web, queued=60)
    http = Http(web)
    first = http.get("/queues/default")
    assert _rows(first.body) == 25
    assert _keys(first.body)[0] == "jid-queued-000000"
    assert "Page 1 of 3" in first.body
    assert 'href="/queues/default?page=2"' in first.body
    third = http.get("/queues/default?page=3")
    assert _rows(third.body) == 10
    assert _keys(third.body)[-1] == "jid-queued-000059"
    assert http.get("/queues/default?page=4").status == 404
    for bad in ("0", "-1", "abc", "1.5", "9" * 30):
        answer = http.get(f"/queues/default?page={bad}")
        assert answer.status == 400, bad
        assert "pages are numbered from 1" in answer.body


def test_set_pages_are_paginated_too(web: EmbeddedServer) -> None:
    fill(web, retries=27)
    http = Http(web)
    assert _rows(http.get("/retries").body) == 25
    assert _rows(http.get("/retries?page=2").body) == 2
    assert http.get("/retries?page=3").status == 404
    assert http.get("/retries?page=x").status == 400
    # An empty set still has its first page.
    assert http.get("/morgue").status == 200
    assert http.get("/morgue?page=2").status == 404


def test_bad_input_gets_a_404_or_400_page_never_a_500(web: EmbeddedServer) -> None:
    fill(web, retries=1)
    http = Http(web)
    cases = {
        "/queues/no-such-queue": 404,
        "/retries/1234.000000%7Cno-such-jid": 404,
        "/morgue/1234.000000%7Cno-such-jid": 404,
        "/scheduled/not-a-key": 400,
        "/retries/nan%7Cjid": 400,
        "/no-such-page": 404,
        "/static/nope.js": 404,
        "/?days=0": 400,
        "/?days=x": 400,
    }
    for path, status in cases.items():
        answer = http.get(path)
        assert answer.status == status, (path, answer.status, answer.body[:200])
        assert f"<h1>{status}:" in answer.body, path
        assert answer.headers["content-security-policy"] == CSP
    assert http.request("POST", "/stats", b"").status == 405
    posts = [
        ("/retries", [("action", "explode")], 400),
        ("/retries", [("action", "retry")], 400),  # nothing selected
        ("/morgue", [("action", "kill"), ("all", "1")], 400),  # the dead cannot be killed
        ("/queues/nope", [("action", "pause")], 404),
        ("/queues/failing", [("action", "melt")], 400),
        ("/queues/failing", [("action", "delete")], 400),
        ("/busy", [("action", "quiet"), ("wid", "no-such-wid")], 404),
        ("/busy", [("action", "dance"), ("wid", "all")], 400),
        ("/busy", [("wid", "all")], 400),
        ("/retries/1.0%7Cgone", [("action", "delete")], 404),
    ]
    for path, fields, status in posts:
        answer = http.post(path, fields)
        assert answer.status == status, (path, fields, answer.status, answer.body[:200])
    too_big = http.request("POST", "/busy", b"x" * (300 * 1024))
    assert too_big.status == 413


def test_state_changes_need_the_csrf_token_in_field_and_cookie(web: EmbeddedServer) -> None:
    fill(web, queued=1)
    core = web.core
    assert core is not None
    http = Http(web)
    token = http.token()
    assert http.form_token(http.get("/queues").body) == token
    body = f"action=pause&{CSRF_FIELD}={token}".encode()
    refusals = [
        ("no token", b"action=pause", {}),
        ("wrong token", b"action=pause&" + f"{CSRF_FIELD}=x{token}".encode(), {}),
        ("no cookie", body, {"Cookie": ""}),
        ("wrong cookie", body, {"Cookie": "kaffi_csrf=forged"}),
    ]
    for why, payload, headers in refusals:
        answer = http.request("POST", "/queues/default", payload, headers=headers)
        assert answer.status == 403, why
        assert "CSRF token" in answer.body
        assert not _paused(core, "default"), why
    # A GET never changes anything, whatever it carries.
    assert http.get("/queues/default?action=pause").status == 200
    assert not _paused(core, "default")
    done = http.request("POST", "/queues/default", body)
    assert done.status == 303
    assert done.headers["location"].startswith("/queues/default?msg=")
    assert _paused(core, "default")
    assert "Paused queue default." in http.get(done.headers["location"]).body
    # Another process (another token) would not be accepted either.
    with EmbeddedServer(web="127.0.0.1:0") as other:
        assert Http(other).token() != token


def test_actions_change_the_servers_state(web: EmbeddedServer) -> None:
    fill(web, queued=5, retries=3, scheduled=2, dead=2)
    http = Http(web)
    core = web.core
    assert core is not None
    keys = _keys(http.get("/queues/default").body)
    assert http.post("/queues/default", [("action", "delete"), ("key", keys[0])]).status == 303
    assert next(j.jid for j in core.queues["default"].jobs) == keys[1]
    assert http.post("/queues/default", [("action", "clear")]).status == 303
    assert len(core.queues["default"].jobs) == 0
    assert "default" in core.queues
    # Retry now: the job goes back to its queue.
    first = _keys(http.get("/retries").body)[0]
    assert http.post("/retries", [("action", "retry"), ("key", first)]).status == 303
    assert len(core.retries) == 2
    assert len(core.queues["failing"].jobs) == 1
    # Kill with "all" kills every job (Faktory 1.10.0's UI requeues them instead).
    assert http.post("/retries", [("action", "kill"), ("all", "1")]).status == 303
    assert len(core.retries) == 0
    assert len(core.dead) == 4
    assert len(core.queues["failing"].jobs) == 1
    # The job page's buttons act on that one job.
    dead_key = _keys(http.get("/morgue").body)[0]
    answer = http.post(f"/morgue/{quote(dead_key, safe='')}", [("action", "retry")])
    assert answer.status == 303
    assert answer.headers["location"].startswith("/morgue?msg=")
    assert len(core.dead) == 3
    assert http.post("/morgue", [("action", "delete"), ("all", "1")]).status == 303
    assert len(core.dead) == 0
    assert http.post("/scheduled", [("action", "retry"), ("all", "1")]).status == 303
    assert len(core.scheduled) == 0
    assert len(core.queues["later"].jobs) == 2


def test_busy_lists_workers_and_their_jobs_and_signals_them(web: EmbeddedServer) -> None:
    fill(web, queued=2)
    worker = Wire.hello(web, "wid-busy-1")
    other = Wire.hello(web, "wid-busy-2")
    try:
        assert worker.send("FETCH default")[0].startswith("$")
        http = Http(web)
        page = http.get("/busy").body
        assert 'data-wid="wid-busy-1"' in page
        assert 'data-wid="wid-busy-2"' in page
        assert "jid-queued-000000" in page
        assert "Add" in page
        answer = http.post("/busy", [("action", "quiet"), ("wid", "wid-busy-1")])
        assert answer.status == 303
        assert web.workers()[0]["state"] == "quiet" or web.workers()[1]["state"] == "quiet"
        assert worker.value('BEAT {"wid":"wid-busy-1"}') == {"state": "quiet"}
        assert http.post("/busy", [("action", "terminate"), ("wid", "all")]).status == 303
        assert {w["state"] for w in web.workers()} == {"terminate"}
        assert other.value('BEAT {"wid":"wid-busy-2"}') == {"state": "terminate"}
    finally:
        worker.close()
        other.close()


def test_a_password_is_asked_for_with_basic_auth() -> None:
    with EmbeddedServer(password="s3cret", web="127.0.0.1:0") as srv:
        anonymous = Http(srv)
        for path in ("/", "/stats", "/static/kaffi.css"):
            refused = anonymous.get(path)
            assert refused.status == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic ")
        assert anonymous.get("/", password="wrong").status == 401
        assert anonymous.get("/", headers={"Authorization": "Basic !!!"}).status == 401
        assert anonymous.get("/", headers={"Authorization": "Bearer s3cret"}).status == 401
        http = Http(srv, password="s3cret")
        assert http.get("/").status == 200
        assert http.get("/stats").json()["server"]["faktory_version"] == "1.10.0"
        # With a password, any Host may be used (the UI may sit behind a proxy).
        assert http.get("/", headers={"Host": "kaffi.example"}).status == 200


def test_without_a_password_only_loopback_hosts_are_answered(web: EmbeddedServer) -> None:
    http = Http(web)
    assert http.get("/", headers={"Host": f"localhost:{web.web_port}"}).status == 200
    refused = http.get("/", headers={"Host": "attacker.example"})
    assert refused.status == 400
    assert "unknown Host" in refused.body


def test_a_non_loopback_ui_needs_a_password() -> None:
    with pytest.raises(ConfigurationError, match=r"web UI on 0\.0\.0\.0 without a password"):
        EmbeddedServer(web="0.0.0.0:0")
    # With a password it is accepted (not started here: tests only listen on loopback).
    assert EmbeddedServer(password="pw", web="0.0.0.0:0").password == "pw"


def test_the_ui_is_off_by_default_and_needs_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    with EmbeddedServer() as srv:
        assert srv.web_port == 0
        with pytest.raises(Exception, match="web UI is not running"):
            _ = srv.web_url
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'kaffi\[web\]'"):
        EmbeddedServer(web="127.0.0.1:0")


def test_a_taken_port_is_a_clear_error(web: EmbeddedServer) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot serve the web UI on 127\.0\.0\.1"):
        EmbeddedServer(web=f"127.0.0.1:{web.web_port}").start()


def test_with_tls_the_ui_is_served_over_https(tmp_path: Path) -> None:
    if certs.available() is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    pki = certs.make_pki(tmp_path)
    with EmbeddedServer(
        password="pw", tls_cert=pki.server_cert, tls_key=pki.server_key, web="127.0.0.1:0"
    ) as srv:
        assert srv.web_url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        request = urllib.request.Request(
            srv.web_url + "health",
            headers={"Authorization": "Basic OnB3"},  # ":pw"
        )
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            assert json.loads(answer.read())["server"]["faktory_version"] == "1.10.0"
        plain = urllib.request.Request(srv.web_url.replace("https", "http") + "health")
        with pytest.raises(OSError):
            urllib.request.urlopen(plain, timeout=30)


def test_history_comes_from_the_data_file(tmp_path: Path) -> None:
    data = tmp_path / "jobs.sqlite3"
    with EmbeddedServer(data=data, web="127.0.0.1:0") as srv:
        fill(srv, queued=1, retries=2)
        wire = Wire.hello(srv)
        try:
            wire.send("FETCH default")
            assert wire.send('ACK {"jid":"jid-queued-000000"}') == ["+OK"]
        finally:
            wire.close()
        page = Http(srv).get("/?days=30").body
        # Today's row: one ACK and two FAILs processed, two failed.
        today = r'<td>\d{4}-\d\d-\d\d</td><td class="num">3</td><td class="num">2</td>'
        assert re.search(today, page)
        assert page.count("<tr><td>") == 30
    with EmbeddedServer(web="127.0.0.1:0") as memory:
        assert "no history" in Http(memory).get("/").body
