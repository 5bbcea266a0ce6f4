"""Test doubles shipped as product code, for kaffi's own tests and for its users'.

- :mod:`kaffi.testing.pytest_plugin`: the ``faktory_server`` and ``kaffi_client`` pytest
  fixtures (registered through the ``pytest11`` entry point, so installing kaffi is enough);
- :mod:`kaffi.testing.modes`: ``app.testing.inline()`` and ``app.testing.fake()`` (written
  in :mod:`kaffi.app.testing`: the App owns them).

The embedded server itself lives in :mod:`kaffi.server`.
"""
