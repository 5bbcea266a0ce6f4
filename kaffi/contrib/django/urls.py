"""``include("kaffi.contrib.django.urls")``: the read-only Faktory page (see :mod:`.views`)."""

from __future__ import annotations

from django.urls import path

from kaffi.contrib.django.views import faktory_info

app_name = "kaffi"
urlpatterns = [path("", faktory_info, name="info")]
