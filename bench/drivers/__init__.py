"""Scripts that drive the other Faktory clients for the benchmark suite.

Each runs in the bench-only environment (``bench/.env/``) that :mod:`bench.peers` installs,
never in kaffi's own: ``faktory_worker.js`` (Node ``faktory-worker``), ``pypi_faktory.py``
(PyPI ``faktory``) and ``pyfaktory_driver.py`` (``pyfaktory``). They import their client
with :func:`importlib.import_module`, so type-checking this repository needs none of them.

Every driver takes ``OP N QUEUE`` on its command line, reads ``FAKTORY_URL``, and for the
enqueue operations prints one JSON line ``{"jobs": N, "seconds": S}`` timed from after
the client connected. ``work`` runs a worker on QUEUE until SIGTERM.
"""
