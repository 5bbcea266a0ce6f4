"""The App spec worker processes load: ``kaffi.contrib.django.boot:app``.

``manage.py kaffi_worker`` hands this spec to kaffi's worker command, and the supervisor
of ``--processes N`` hands it to each child, which imports it in a fresh interpreter:
importing this module sets Django up (``django.setup()``, which also discovers the tasks)
when it is not yet, then exposes the project's App with the connection middleware
installed (:func:`kaffi.contrib.django.db.install`): only worker processes get them.
``DJANGO_SETTINGS_MODULE`` and ``sys.path`` reach the children from the command's process.
"""

from __future__ import annotations

import django
from django.apps import apps

from kaffi.contrib.django import get_app
from kaffi.contrib.django.db import install

__all__ = ["app"]

if not apps.ready:
    django.setup()

#: The project's App, with every tasks.py imported and the connection middleware.
app = install(get_app())
