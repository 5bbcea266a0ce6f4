"""Settings of the test project. The SQLite file and the Faktory URL come from the test
(``SHOP_DB``, ``SHOP_FAKTORY_URL``), so each test can use its own."""

from __future__ import annotations

import os

SECRET_KEY = "kaffi-tests-only"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "kaffi.contrib.django",
    "shop",
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["SHOP_DB"],
        "OPTIONS": {"timeout": 30},
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

KAFFI = {
    "url": os.environ.get("SHOP_FAKTORY_URL", "tcp://127.0.0.1:7419"),
    "queues": ["shop", "default"],
    "concurrency": 2,
    "timeout": 5,
    "client": {"pool_size": 4},
}
