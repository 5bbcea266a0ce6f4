"""``app.testing.inline()`` and ``app.testing.fake()``, under their documented import path.

The modes are a feature of the App and are written in :mod:`kaffi.app.testing`, so that
:mod:`kaffi.app` never imports this package (the layers read top-down: testing -> app).
"""

from kaffi.app.testing import MAX_RUN_ALL, FakeJobs, InlineDelivery, RecordedBatch, Testing

__all__ = ["MAX_RUN_ALL", "FakeJobs", "InlineDelivery", "RecordedBatch", "Testing"]
