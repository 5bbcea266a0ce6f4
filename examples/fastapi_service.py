"""A FastAPI service: upload a file, a job processes it, the client follows its progress.

Run it with ``python examples/fastapi_service.py`` (needs ``pip install "kaffi[fastapi]"
uvicorn``). The service has two endpoints:

- ``POST /uploads`` takes a text file (multipart), stores it, enqueues
  ``count_words(upload_id)`` with ``await ... .delay_async()`` and answers 202 with the
  upload id and the jid;
- ``GET /uploads/{upload_id}`` reports the job's progress: queued, working (with a
  percentage), done (with the result).

kaffi's lifespan (``kaffi.contrib.asgi.kaffi_lifespan``) opens the App's AsyncClient when
uvicorn starts and closes it at shutdown. Progress lives in a small SQLite file that the
job writes and the endpoint reads, so web and worker processes could be separate
machines' worth apart (any shared store works; Faktory Enterprise can track jobs too).

The script starts uvicorn on a free port, uploads three files over HTTP, runs a burst
worker in a thread while it polls the progress endpoint, prints what it saw and stops.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from _server import faktory_url, stopwatch, wait_until
from fastapi import FastAPI, HTTPException, UploadFile

from kaffi import App
from kaffi.contrib.asgi import kaffi_lifespan

say = stopwatch()
FILES = {
    "notes.txt": "kaffi runs jobs on faktory\n" * 40,
    "poem.txt": "the queue is long and the workers are few\n" * 120,
    "empty.txt": "",
}


class Progress:
    """Each upload's state and result, in SQLite (one connection per call: threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS progress"
                " (id TEXT PRIMARY KEY, name TEXT, state TEXT, percent INTEGER, words INTEGER)"
            )

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One connection per call, closed after it: sqlite3's own ``with`` only commits.
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:
                yield db
        finally:
            db.close()

    def set(self, upload_id: str, **fields: Any) -> None:
        """Create or update one upload's row."""
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO progress (id) VALUES (?)", (upload_id,))
            for name, value in fields.items():
                db.execute(f"UPDATE progress SET {name} = ? WHERE id = ?", (value, upload_id))

    def get(self, upload_id: str) -> dict[str, Any] | None:
        """One upload's row as a dict, or None."""
        with self._db() as db:
            row = db.execute(
                "SELECT name, state, percent, words FROM progress WHERE id = ?", (upload_id,)
            ).fetchone()
        if row is None:
            return None
        return {"name": row[0], "state": row[1], "percent": row[2], "words": row[3]}


def build(url: str, folder: Path) -> tuple[App, FastAPI]:
    """The kaffi App with its task, and the FastAPI service enqueuing it."""
    app = App(url)
    progress = Progress(folder / "progress.sqlite3")

    @app.task(queue="uploads")
    def count_words(upload_id: str) -> None:
        """Count the words of an upload, a slice at a time, reporting progress."""
        lines = (folder / upload_id).read_text().splitlines()
        progress.set(upload_id, state="working", percent=0)
        words = 0
        step = max(1, len(lines) // 4)
        for start in range(0, len(lines), step):
            words += sum(len(line.split()) for line in lines[start : start + step])
            time.sleep(0.02)  # stands for real work on each slice
            progress.set(upload_id, percent=min(100, (start + step) * 100 // len(lines)))
        progress.set(upload_id, state="done", percent=100, words=words)

    api = FastAPI(lifespan=kaffi_lifespan(app))

    @api.post("/uploads", status_code=202)
    async def upload(file: UploadFile) -> dict[str, str | None]:
        upload_id = uuid.uuid4().hex
        (folder / upload_id).write_bytes(await file.read())
        progress.set(upload_id, name=file.filename or upload_id, state="queued", percent=0)
        jid = await count_words.delay_async(upload_id)
        return {"upload_id": upload_id, "jid": jid}

    @api.get("/uploads/{upload_id}")
    async def status(upload_id: str) -> dict[str, Any]:
        found = progress.get(upload_id)
        if found is None:
            raise HTTPException(404, f"no upload {upload_id}")
        return found

    return app, api


def post_file(base: str, name: str, text: str) -> dict[str, str]:
    """Upload one file as multipart/form-data, the way a browser form does."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: text/plain\r\n\r\n{text}\r\n--{boundary}--\r\n"
    ).encode()
    request = urllib.request.Request(
        f"{base}/uploads",
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, str] = json.loads(response.read())
        return answer


def get_json(url: str) -> dict[str, Any]:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def main() -> None:
    """Serve, upload, work, follow the progress, stop."""
    with faktory_url() as url, tempfile.TemporaryDirectory() as tmp:
        app, api = build(url, Path(tmp))
        server = uvicorn.Server(
            uvicorn.Config(api, host="127.0.0.1", port=0, log_level="warning", ws="none")
        )
        web = threading.Thread(target=server.run, daemon=True)
        web.start()
        wait_until(lambda: server.started, 30, "uvicorn to start")
        base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        say(f"FastAPI service on {base}")

        uploads = {name: post_file(base, name, text) for name, text in FILES.items()}
        for name, answer in uploads.items():
            say(f"POST /uploads {name} -> 202, job {answer['jid']}")

        seen: dict[str, list[str]] = {name: [] for name in FILES}

        def all_done() -> bool:
            for name, answer in uploads.items():
                state = get_json(f"{base}/uploads/{answer['upload_id']}")
                shown = f"{state['state']} {state['percent']}%"
                if not seen[name] or seen[name][-1] != shown:
                    seen[name].append(shown)
            return all(states[-1] == "done 100%" for states in seen.values())

        all_done()  # every upload is "queued" until a worker runs
        worker = threading.Thread(
            target=asyncio.run,
            args=(app.worker(queues=["uploads"], concurrency=2, burst=True).run(),),
        )
        worker.start()
        wait_until(all_done, 60, "every upload to be processed")
        worker.join(30)
        for name, answer in uploads.items():
            result = get_json(f"{base}/uploads/{answer['upload_id']}")
            say(f"{name}: {' -> '.join(seen[name])}; {result['words']} words")
        server.should_exit = True
        web.join(30)
        say(f"all {len(uploads)} uploads processed; service stopped")


if __name__ == "__main__":
    main()
