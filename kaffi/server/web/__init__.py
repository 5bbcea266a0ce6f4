"""The web UI of ``kaffi server`` (Faktory's UI on port 7420, with its pages and paths).

Needs the ``web`` extra (``pip install 'kaffi[web]'``: starlette, jinja2, uvicorn). This
module only says whether that extra is installed (:func:`web_available`, without importing
it) and how to get it; :mod:`~kaffi.server.web.runner` serves the app with uvicorn on the
server's own loop, :mod:`~kaffi.server.web.app` is the ASGI app and
:mod:`~kaffi.server.web.state` what it reads and does to the server's state.

Must never import the extra at import time: ``kaffi.server`` imports nothing of it unless
the UI is asked for.
"""

from __future__ import annotations

import importlib.util

__all__ = ["web_available", "MISSING_EXTRA", "WEB_MODULES"]

#: The packages the UI imports (the ``web`` extra).
WEB_MODULES = ("starlette", "jinja2", "uvicorn")
#: What to tell someone who asked for the UI without the extra.
MISSING_EXTRA = "the web UI needs the web extra: pip install 'kaffi[web]'"


def web_available() -> bool:
    """True when starlette, jinja2 and uvicorn can be imported (checked without importing)."""
    return all(importlib.util.find_spec(name) is not None for name in WEB_MODULES)
