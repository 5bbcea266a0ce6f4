"""An asyncio producer: an async web handler enqueues jobs without blocking its loop.

Run it with ``python examples/asyncio_producer.py``. A tiny HTTP server written with
plain ``asyncio.start_server`` answers ``GET /orders/<id>/receipt`` by calling
``await send_receipt.delay_async(order_id)`` (``app.async_client`` under the hood) and
returning the jid. Many requests are served concurrently on one event loop; then a burst
worker, in the same loop, runs the jobs.

The same handler in FastAPI (not a kaffi dependency) would read::

    @api.post("/orders/{order_id}/receipt", status_code=202)
    async def receipt(order_id: int) -> dict[str, str]:
        return {"jid": await send_receipt.delay_async(order_id)}
"""

from __future__ import annotations

import asyncio
import json

from _server import faktory_url, stopwatch

from kaffi import App

say = stopwatch()
ORDERS = list(range(100, 130))


def build_app(url: str, receipts: list[int]) -> App:
    """An App with the task the web handler enqueues."""
    app = App(url)

    @app.task(queue="receipts")
    async def send_receipt(order_id: int) -> None:
        await asyncio.sleep(0.01)  # a real task would call a mail API here
        receipts.append(order_id)

    return app


async def serve(app: App) -> asyncio.Server:
    """A tiny asyncio HTTP server whose handler enqueues a job with delay_async."""
    send_receipt = app.tasks["send_receipt"]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass  # skip the headers
        parts = request_line.split()
        path = parts[1] if len(parts) > 1 else ""
        pieces = path.strip("/").split("/")
        if len(pieces) == 3 and pieces[0] == "orders" and pieces[2] == "receipt":
            jid = await send_receipt.delay_async(int(pieces[1]))
            status, body = "202 Accepted", {"jid": jid}
        else:
            status, body = "404 Not Found", {"error": "no such page"}
        data = json.dumps(body).encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def get(port: int, path: str) -> dict[str, str]:
    """One GET request to the example server; returns its JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    body = json.loads(response.split(b"\r\n\r\n", 1)[1])
    assert isinstance(body, dict)
    return body


async def run(url: str) -> None:
    """Send concurrent requests, then drain the queue with a burst worker."""
    receipts: list[int] = []
    app = build_app(url, receipts)
    server = await serve(app)
    port = server.sockets[0].getsockname()[1]
    say(f"asyncio web app listening on 127.0.0.1:{port}")
    async with server:
        answers = await asyncio.gather(*(get(port, f"/orders/{n}/receipt") for n in ORDERS))
    say(f"{len(answers)} concurrent requests each enqueued a job, e.g. {answers[0]}")

    await app.worker(queues=["receipts"], concurrency=10, burst=True).run()
    say(f"burst worker sent {len(receipts)} receipts")
    await app.aclose()
    if sorted(receipts) != ORDERS:
        raise SystemExit(f"expected receipts for {ORDERS}, got {sorted(receipts)}")


def main() -> None:
    """Run the example against FAKTORY_URL or an embedded server."""
    with faktory_url() as url:
        asyncio.run(run(url))


if __name__ == "__main__":
    main()
