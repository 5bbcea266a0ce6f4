"""Fixtures of the compatibility tests: the embedded server each script talks to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kaffi.server import EmbeddedServer


@pytest.fixture
def srv() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as server:
        yield server
