"""Fixtures of the server tests: a fresh embedded server and raw wire connections."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kaffi.server import EmbeddedServer
from tests.server.wire import Wire


@pytest.fixture
def srv() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server


@pytest.fixture
def wire(srv: EmbeddedServer) -> Iterator[Callable[..., Wire]]:
    """``wire(wid=None, password=None, server=srv, greet=True)``: a raw connection, closed
    after the test."""
    opened: list[Wire] = []

    def connect(
        wid: str | None = None, *, server: Any = None, greet: bool = True, **kw: Any
    ) -> Wire:
        target = server or srv
        conn = Wire.hello(target, wid, **kw) if greet else Wire(target.host, target.port, **kw)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()
