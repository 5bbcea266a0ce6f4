"""A raw line-level Faktory client for the server tests: bytes in, reply lines out."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

from kaffi.protocol.commands import password_hash

HELLO_WORKER = b'HELLO {"v":2,"hostname":"t","wid":"%s","pid":1,"labels":["t"]}\r\n'


class Closed(Exception):
    """The server closed the connection."""


class Wire:
    """One connection that sends lines and reads raw RESP replies (bulk bodies included)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 10.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
        self.sock = sock
        self.file = sock.makefile("rwb")

    @classmethod
    def hello(
        cls, server: Any, wid: str | None = None, password: str | None = None, **kw: Any
    ) -> Wire:
        wire = cls(server.host, server.port, **kw)
        hi = wire.line()
        assert hi.startswith("+HI "), hi
        doc = json.loads(hi[4:])
        body: dict[str, Any] = {"v": 2, "hostname": "t", "pid": 1}
        if wid:
            body["wid"] = wid
            body["labels"] = ["t"]
        if "s" in doc:
            body["pwdhash"] = password_hash(password or "", doc["s"], doc["i"])
        assert wire.send("HELLO " + json.dumps(body, separators=(",", ":"))) == ["+OK"]
        return wire

    def line(self) -> str:
        raw = self.file.readline()
        if not raw:
            raise Closed
        return raw.decode().rstrip("\r\n")

    def reply(self) -> list[str]:
        first = self.line()
        if first.startswith("$") and first != "$-1":
            body = self.file.read(int(first[1:]) + 2)
            return [first, body[:-2].decode()]
        return [first]

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def send(self, line: str) -> list[str]:
        self.write(line.encode() + b"\r\n")
        return self.reply()

    def value(self, line: str) -> Any:
        """Send a command answered with a bulk JSON document; return the document."""
        reply = self.send(line)
        assert reply[0].startswith("$"), reply
        return None if reply == ["$-1"] else json.loads(reply[1])

    def closed_by_server(self) -> bool:
        try:
            return self.file.readline() == b""
        except (ConnectionError, OSError):
            return True

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


def push_line(**fields: Any) -> str:
    fields.setdefault("args", [])
    fields.setdefault("jobtype", "A")
    return "PUSH " + json.dumps(fields, separators=(",", ":"))
