"""The test project's URLs: the admin, with kaffi's Faktory page in front of it."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/kaffi/", include("kaffi.contrib.django.urls")),
    path("admin/", admin.site.urls),
]
