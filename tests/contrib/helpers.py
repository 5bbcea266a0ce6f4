"""Helpers for the metrics and tracing tests: read a ``/metrics`` page with
prometheus-client's own parser, find where a process serves it, and run ``kaffi``
commands from the repository root (where ``tests.contrib.*`` apps import)."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support import WAIT, LogLines

REPO_ROOT = Path(__file__).resolve().parents[2]

_SERVED = re.compile(r"serving metrics on (http://\S+/metrics)")


def parse(text: str) -> list[Sample]:
    """Every sample of a Prometheus text page, through prometheus-client's parser."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(url: str) -> list[Sample]:
    """GET ``url`` and parse it."""
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.status == 200
        return parse(response.read().decode("utf-8"))


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The value of the sample ``name`` whose labels include ``labels``; None if absent.
    More than one match is a test bug."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of every sample ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def served_url(reader: LogLines) -> str:
    """The ``/metrics`` URL a ``kaffi`` process logged it serves."""
    line = reader.wait_for("serving metrics on ")[0]
    match = _SERVED.search(line)
    assert match is not None, line
    return match.group(1)
