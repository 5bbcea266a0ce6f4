"""Fixtures of the server tests: a fresh embedded server and raw wire connections.

``srv`` is always the embedded server here: most of these tests look inside it (its
clock, its storage, its controls). ``test_transcript.py`` overrides ``srv`` with the
``faktory_server`` fixture, so its tests, which assert only what Faktory 1.10.0 does,
run against the real Faktory named by ``KAFFI_TEST_URL`` when that is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kaffi.server import EmbeddedServer
from tests.server.wire import Wire
from tests.support import embedded_server


@pytest.fixture
def srv() -> Iterator[EmbeddedServer]:
    with embedded_server() as server:
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
        if greet:
            # The server's own password unless the test says otherwise (a wrong one, say).
            kw.setdefault("password", getattr(target, "password", None))
            conn = Wire.hello(target, wid, **kw)
        else:
            conn = Wire(target.host, target.port, **kw)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()
