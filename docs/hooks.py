"""mkdocs hook: show the Sphinx cross-reference roles of kaffi's docstrings as code.

kaffi's docstrings use Sphinx roles (:class:`~kaffi.client.Client`), which mkdocstrings
leaves as they are. This turns each into inline code (the last name when the target
starts with ``~``, as Sphinx does), so the API reference reads cleanly.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([\w.]+)</code>")


def _replace(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_replace, html)
