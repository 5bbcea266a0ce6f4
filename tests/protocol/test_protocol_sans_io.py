"""kaffi.protocol does no I/O.

Two checks: the source of kaffi/protocol (and kaffi/errors.py, which it imports) never
imports an I/O module or another kaffi layer, anywhere, including inside functions; and in
a fresh interpreter, ``import kaffi.protocol`` loads no I/O module beyond what its
third-party dependency (pydantic, which imports threading and, via email.utils, socket)
already loaded by itself.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import kaffi.errors
import kaffi.protocol

IO_MODULES = {
    "socket",
    "_socket",
    "ssl",
    "_ssl",
    "asyncio",
    "threading",
    "_thread",
    "selectors",
    "select",
    "subprocess",
    "multiprocessing",
    "concurrent",
}

PROTOCOL_DIR = Path(kaffi.protocol.__file__).parent
SOURCES = [*sorted(PROTOCOL_DIR.glob("*.py")), Path(kaffi.errors.__file__)]


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path.name}: use absolute imports"
            assert node.module is not None
            names.add(node.module)
    return names


def test_protocol_sources_import_no_io_module_and_no_other_layer() -> None:
    assert len(SOURCES) >= 5  # __init__, commands, models, resp, errors
    for path in SOURCES:
        modules = imported_modules(path)
        assert modules, f"{path.name} imports nothing? the scan is broken"
        io = sorted(m for m in modules if m.split(".")[0] in IO_MODULES)
        assert io == [], f"{path.name} imports {io}"
        layers = sorted(
            m
            for m in modules
            if m.split(".")[0] == "kaffi"
            and m != "kaffi.errors"
            and not m.startswith("kaffi.protocol")
        )
        assert layers == [], f"{path.name} imports {layers}"


PROBE = """
import json, sys
import hashlib, re, secrets, datetime, dataclasses, collections.abc, typing
import pydantic, pydantic_core
# Building one model loads what pydantic itself needs (threading, importlib.metadata ->
# email.utils -> socket): that is the dependency's baseline, not ours.
class Baseline(pydantic.BaseModel):
    when: datetime.datetime | None = None
Baseline.model_validate_json('{"when":"2030-01-01T00:00:00Z"}')
before = set(sys.modules)
import kaffi.protocol
import kaffi.protocol.commands, kaffi.protocol.models, kaffi.protocol.resp
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_importing_kaffi_protocol_loads_no_io_module_of_its_own() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    )
    loaded = set(json.loads(result.stdout))
    assert "kaffi.protocol.resp" in loaded  # the probe really imported it
    offenders = sorted(m for m in loaded if m.split(".")[0] in IO_MODULES)
    assert offenders == []
