"""The embedded Faktory-compatible server (``kaffi server``, :class:`EmbeddedServer`).

It speaks the Faktory Work Protocol like Faktory 1.10.0, for laptops, CI and tests;
production keeps the real Faktory. The layers, each testable alone:

- :mod:`~kaffi.server.gocompat` and :mod:`~kaffi.server.jobs`: Go's error texts and the
  job payload rules (no I/O);
- :mod:`~kaffi.server.core`: the state machine (queues, reservations, sets, workers);
- :mod:`~kaffi.server.session`: one connection's handshake and commands (no I/O);
- :mod:`~kaffi.server.storage`: SQLite (WAL) durability;
- :mod:`~kaffi.server.network` and :mod:`~kaffi.server.embedded`: asyncio and the
  ``EmbeddedServer`` front door.

This package imports :mod:`kaffi.protocol` and :mod:`kaffi.errors`, nothing else of kaffi.
"""

from kaffi.server.embedded import EmbeddedServer

__all__ = ["EmbeddedServer"]
