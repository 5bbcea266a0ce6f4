"""Fixtures of the compatibility tests: the embedded server each script talks to, in the
open-source mode (``srv``) or with the Enterprise features (``ent_srv``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kaffi.server import EmbeddedServer
from tests.support import embedded_server


@pytest.fixture
def srv() -> Iterator[EmbeddedServer]:
    with embedded_server() as server:
        yield server


@pytest.fixture
def ent_srv() -> Iterator[EmbeddedServer]:
    with embedded_server(enterprise=True) as server:
        yield server
