"""Fixtures of the compatibility tests: the embedded server each script talks to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kaffi.server import EmbeddedServer
from tests.support import embedded_server


@pytest.fixture
def srv() -> Iterator[EmbeddedServer]:
    with embedded_server() as server:
        yield server
