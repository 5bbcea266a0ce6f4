"""A synchronous producer: a threaded web app that enqueues a job per request.

Run it with ``python examples/threaded_web_producer.py``. A standard-library
``ThreadingHTTPServer`` (one thread per request, like most WSGI servers) answers
``POST /signup?email=...`` by calling ``send_welcome.delay(email)`` and returning the jid.
``app.client`` is thread-safe: every request thread shares its connection pool.

The script then sends a handful of requests from several threads at once, runs a burst
worker to send the "mails", and shuts everything down.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from _server import faktory_url, stopwatch

from kaffi import App, KaffiError

say = stopwatch()
EMAILS = [f"user{n}@example.com" for n in range(8)]


def build_app(url: str, sent: list[str]) -> App:
    """An App with the task the sign-up handler enqueues."""
    app = App(url)
    lock = threading.Lock()

    @app.task(queue="mail")
    def send_welcome(email: str) -> None:
        with lock:
            sent.append(email)

    return app


def make_handler(app: App) -> type[BaseHTTPRequestHandler]:
    """A request handler class whose POST enqueues a welcome mail with delay."""
    send_welcome = app.tasks["send_welcome"]

    class SignupHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            email = query.get("email", [""])[0]
            try:
                jid = send_welcome.delay(email)
            except KaffiError as exc:  # server down, or an argument kaffi refused
                self.respond(503, {"error": str(exc)})
                return
            self.respond(202, {"jid": jid})

        def respond(self, status: int, body: dict[str, str | None]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            """Keep the example's output to what matters."""

    return SignupHandler


def sign_up(base: str, email: str) -> str:
    """POST one sign-up to the example server; returns the jid it answered with."""
    request = urllib.request.Request(f"{base}/signup?email={email}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        jid = json.load(response)["jid"]
    assert isinstance(jid, str)
    return jid


def main() -> None:
    """Serve sign-ups from threads, then drain the queue with a burst worker."""
    with faktory_url() as url:
        sent: list[str] = []
        app = build_app(url, sent)
        web = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(app))
        base = f"http://127.0.0.1:{web.server_address[1]}"
        serving = threading.Thread(target=web.serve_forever, name="web")
        serving.start()
        try:
            say(f"web app listening on {base}")
            with ThreadPoolExecutor(max_workers=4) as pool:
                jids = list(pool.map(lambda email: sign_up(base, email), EMAILS))
            say(f"{len(jids)} sign-ups answered 202, each with the jid of its job")
        finally:
            web.shutdown()
            serving.join(timeout=10)
            web.server_close()

        app.worker(queues=["mail"], burst=True).work()
        say(f"burst worker sent {len(sent)} welcome mails and exited")
        app.close()
        if sorted(sent) != sorted(EMAILS):
            raise SystemExit(f"expected mails to {EMAILS}, sent {sent}")


if __name__ == "__main__":
    main()
