"""The core never imports the extras: ``import kaffi``, ``kaffi --help``, the help of every
command and a worker without ``--metrics`` leave prometheus-client and OpenTelemetry
unloaded; a missing extra is one clear error naming what to install."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kaffi.contrib import require
from kaffi.errors import ConfigurationError
from tests.contrib.helpers import REPO_ROOT
from tests.support import WAIT

PROBE = textwrap.dedent(
    """
    import json, sys
    import kaffi
    from kaffi.cli import main
    for argv in (["--help"], ["worker", "--help"], ["exporter", "--help"], ["info", "--help"]):
        try:
            main(argv, prog_name="kaffi")
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    app = kaffi.App()
    app.worker(concurrency=2)
    import kaffi.worker.supervisor
    extras = ("prometheus_client", "opentelemetry", "kaffi.contrib.prometheus",
              "kaffi.contrib.otel", "kaffi.contrib.exporter")
    loaded = sorted(m for m in sys.modules if m.startswith(extras))
    print(json.dumps(loaded))
    """
)


def test_core_and_help_do_not_import_the_extras() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == []
    assert "--metrics HOST:PORT" in result.stdout  # the worker's help was really printed
    assert "faktory_queue_size" in result.stdout  # and the exporter's


def test_a_missing_extra_names_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match=r"install kaffi\[extra-name\]"):
        require("kaffi_test_no_such_package", "extra-name")
    with pytest.raises(ConfigurationError, match=r"install kaffi\[extra-name\]"):
        require("kaffi_test_no_such_package.sub", "extra-name")
    # A package that is there but imports something missing: that is what to show.
    (tmp_path / "kaffi_test_broken_extra.py").write_text("import kaffi_test_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="kaffi_test_absent_dependency"):
        require("kaffi_test_broken_extra", "x")


def test_a_blocked_extra_fails_the_integration_import() -> None:
    probe = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None
        from kaffi.errors import ConfigurationError
        try:
            import kaffi.contrib.prometheus
        except ConfigurationError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=WAIT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "prometheus_client is not installed: install kaffi[prometheus]"
        " (pip install 'kaffi[prometheus]')"
    )


def _floors(package: str) -> dict[str, tuple[int, ...]]:
    """The lowest version of ``package`` each extra in pyproject.toml accepts."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    extras = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    floors: dict[str, tuple[int, ...]] = {}
    extra = ""
    for line in extras.splitlines():
        header = re.match(r"^([\w-]+) = \[", line)
        if header:
            extra = header.group(1)
        found = re.search(rf'"{re.escape(package)}>=([\d.]+)"', line)
        if found:
            floors[extra] = tuple(int(part) for part in found.group(1).split("."))
    return floors


def test_the_prometheus_client_floor_is_one_kaffi_runs_on() -> None:
    # serve_metrics (kaffi worker --metrics, kaffi exporter) unpacks the (server, thread)
    # that start_http_server returns from prometheus-client 0.20 on; 0.17-0.19 return
    # None, and every /metrics server failed with a TypeError (checked by running
    # tests/contrib against 0.17.0 and 0.20.0).
    floors = _floors("prometheus-client")
    assert set(floors) == {"dev", "prometheus"}
    assert all(floor >= (0, 20) for floor in floors.values()), floors
