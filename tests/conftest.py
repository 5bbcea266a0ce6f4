"""Suite-wide pytest settings: the suite runs on two pytest-xdist workers by default
(``addopts`` in pyproject.toml), except against a shared real server.

Every test is safe to run in parallel with the others (each gets its own embedded server on
port 0, its own temporary files), but with ``KAFFI_TEST_URL`` all tests share one real
Faktory that each of them FLUSHes first: those runs stay in one process.
"""

from __future__ import annotations

import os

import pytest

from kaffi.testing.pytest_plugin import TEST_URL_ENV


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """No xdist workers when the tests share the real server of ``KAFFI_TEST_URL``."""
    if os.environ.get(TEST_URL_ENV) and getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0
        config.option.dist = "no"
