"""The complete minimal projects of docs/fastapi.md and docs/django.md work as written."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(page: str) -> list[str]:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_fastapi_page_service_runs(
    faktory_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = python_blocks("fastapi.md")[0]
    (tmp_path / "docs_main.py").write_text(main, encoding="utf-8")
    monkeypatch.setenv("FAKTORY_URL", faktory_server.url)
    monkeypatch.delenv("FAKTORY_PROVIDER", raising=False)
    spec = importlib.util.spec_from_file_location("docs_main", tmp_path / "docs_main.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with TestClient(module.api) as http:
        answer = http.post("/reports/3")
        assert answer.status_code == 202
        assert len(answer.json()["jid"]) >= 16
        assert http.get("/faktory").json() == {"queues": 1}
    assert faktory_server.info()["faktory"]["queues"] == {"reports": 1}


@pytest.mark.slow
def test_the_django_page_project_runs(faktory_server: Any, tmp_path: Path) -> None:
    settings, models, tasks, views = python_blocks("django.md")[:4]
    site = tmp_path / "mysite"
    shop = tmp_path / "shop"
    for package in (site, shop, shop / "migrations"):
        package.mkdir()
        (package / "__init__.py").write_text("", encoding="utf-8")
    (site / "settings.py").write_text(
        'SECRET_KEY = "docs"\nUSE_TZ = True\nDEFAULT_AUTO_FIELD = "django.db.models.AutoField"\n'
        + settings,
        encoding="utf-8",
    )
    (shop / "models.py").write_text(models, encoding="utf-8")
    (shop / "tasks.py").write_text(tasks, encoding="utf-8")
    (shop / "views.py").write_text(views, encoding="utf-8")
    script = """
import django
from django.core.management import call_command
from django.test import RequestFactory

django.setup()
call_command("makemigrations", "shop", verbosity=0)
call_command("migrate", verbosity=0)
from shop.views import place_order
response = place_order(RequestFactory().post("/", {"customer": "ada"}))
print(response.status_code, response.content.decode())
call_command("kaffi_worker", "--", "--burst")
from shop.models import Order
print([(o.customer, o.status) for o in Order.objects.all()])
"""
    env = {k: v for k, v in os.environ.items() if k not in ("FAKTORY_URL", "FAKTORY_PROVIDER")}
    env.update(
        DJANGO_SETTINGS_MODULE="mysite.settings", FAKTORY_URL=faktory_server.url, PYTHONPATH=""
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    first, last = result.stdout.strip().splitlines()[-2:] if result.stdout else ("", "")
    assert first.startswith('202 {"order": 1, "jid": ')
    assert last == "[('ada', 'confirmed')]"
