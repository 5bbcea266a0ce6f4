"""The Grafana dashboard in docs/ and the metric tables in docs/observability.md name only
metrics kaffi exposes, and every metric kaffi exposes is in the tables."""

from __future__ import annotations

import json
import re

from kaffi.contrib.exporter import SERVER_METRICS
from kaffi.contrib.prometheus import WORKER_METRICS
from tests.contrib.helpers import REPO_ROOT

PUSH_METRICS = {"kaffi_jobs_pushed_total", "kaffi_push_errors_total"}
EXPOSED = set(WORKER_METRICS) | set(SERVER_METRICS) | PUSH_METRICS
#: What a histogram's samples are called in PromQL.
_SUFFIXES = ("_bucket", "_count", "_sum")


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in EXPOSED:
            return name.removesuffix(suffix)
    return name


def test_dashboard_queries_exposed_metrics() -> None:
    dashboard = json.loads((REPO_ROOT / "docs" / "grafana" / "kaffi-dashboard.json").read_text())
    used: set[str] = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = re.findall(r"\b(?:kaffi|faktory)_[a-z_]+", target["expr"])
            assert names, target["expr"]
            used.update(_family(n) for n in names)
    assert used <= EXPOSED, used - EXPOSED
    assert len(used) >= 12  # the dashboard shows nearly all of them


def test_observability_page_lists_every_metric() -> None:
    page = (REPO_ROOT / "docs" / "observability.md").read_text()
    listed = set(re.findall(r"^\| `((?:kaffi|faktory)_[a-z_]+)` \|", page, flags=re.MULTILINE))
    assert listed == EXPOSED
