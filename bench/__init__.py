"""kaffi's benchmark suite: kaffi against the other Faktory clients, side by side.

``python -m bench`` starts (or, with ``FAKTORY_URL``, uses) a Faktory server on a loopback
address and measures, in one run: enqueueing one job at a time, in bulk, from threads and
from asyncio; draining no-op and CPU-bound jobs with one and two worker processes; worker
start-up time and idle memory; the same operations with Node's ``faktory-worker`` and the
PyPI ``faktory`` and ``pyfaktory`` packages; and the raw-protocol ceilings of the server.
The results go to ``docs/benchmarks.md`` as a table and a chart.

Modules:

- :mod:`bench.harness`: results, the control connection, the server process, timing and
  memory helpers shared by every measurement;
- :mod:`bench.raw`: the raw-protocol ceilings (only :mod:`kaffi.protocol` and sockets);
- :mod:`bench.kaffi_suite`: kaffi's client, app and worker under measurement;
- :mod:`bench.tasks`: the App the benchmark workers run;
- :mod:`bench.peers`: installing and driving the other clients (``bench/drivers/``);
- :mod:`bench.report`: the markdown table, the target checks and the page;
- :mod:`bench.chart`: the chart (matplotlib, a bench-only dependency);
- :mod:`bench.cli`: the command line that ties them together.

This package is not part of kaffi and kaffi never imports it. It sends traffic only to
loopback addresses, and every loop in it is bounded in count and in time.
"""
