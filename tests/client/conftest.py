"""Fixtures for the client tests: a started fake server and clients that get closed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kaffi.client import Client
from tests.support import FakeFaktory


@pytest.fixture
def fake() -> Iterator[FakeFaktory]:
    with FakeFaktory() as server:
        yield server


@pytest.fixture
def client(fake: FakeFaktory) -> Iterator[Client]:
    with Client(fake.url, timeout=5, connect_timeout=5, pool_timeout=5) as c:
        yield c
