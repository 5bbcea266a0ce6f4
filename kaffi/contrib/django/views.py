"""A read-only page for the Django admin: the Faktory server's INFO, for staff.

Add it to the project's URLs, before the admin's own::

    from django.contrib import admin
    from django.urls import include, path

    urlpatterns = [
        path("admin/kaffi/", include("kaffi.contrib.django.urls")),
        path("admin/", admin.site.urls),
    ]

The page shows the queues and their sizes, the retries / scheduled / dead / working sets,
the totals and the server (version, uptime, connections, workers where the server counts
them). It reads INFO through the project's App on each visit and changes nothing; a
server it cannot reach is shown as such, not raised.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from kaffi.errors import KaffiError

__all__ = ["faktory_info", "info_context"]


def info_context(info: dict[str, Any]) -> dict[str, Any]:
    """What the page shows, from an INFO document (as a server sends it)."""
    faktory = info.get("faktory") or {}
    server = info.get("server") or {}
    tasks = faktory.get("tasks") or {}
    workers = (tasks.get("Workers") or {}).get("size")
    return {
        "queues": sorted((faktory.get("queues") or {}).items()),
        "sets": sorted((faktory.get("sets") or {}).items()),
        "totals": [
            ("enqueued", faktory.get("total_enqueued")),
            ("processed", faktory.get("total_processed")),
            ("failures", faktory.get("total_failures")),
            ("queues", faktory.get("total_queues")),
        ],
        "server": [
            ("version", server.get("faktory_version")),
            ("uptime (s)", server.get("uptime")),
            ("connections", server.get("connections")),
            ("workers", workers),
        ],
    }


def _view(request: HttpRequest) -> HttpResponse:
    from kaffi.contrib.django import get_app

    app = get_app()
    context: dict[str, Any] = dict(admin.site.each_context(request))
    context.update(title="Faktory", url=app.settings.url, error=None)
    try:
        context.update(info_context(app.client.info().raw))
    except KaffiError as exc:
        context["error"] = str(exc)
    return TemplateResponse(request, "kaffi/info.html", context)


#: The page, behind the admin's login (staff only).
faktory_info = admin.site.admin_view(_view)
