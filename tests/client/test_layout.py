"""How kaffi/client is put together: commands written once for both clients, and an
import graph that only goes one way."""

from __future__ import annotations

import ast
import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest

import kaffi.client
from kaffi.client import AsyncClient, Client
from kaffi.client import base as base_module
from kaffi.client.base import run_plan, run_plan_async
from kaffi.protocol.models import EncodedJob, JobPayload
from tests.support import FakeFaktory

CLIENT_DIR = Path(kaffi.client.__file__).parent
COMMANDS = [
    "push",
    "push_bulk",
    "fetch",
    "ack",
    "fail",
    "beat",
    "send",
    "info",
    "flush",
    "queue_pause",
    "queue_resume",
    "queue_remove",
    "queue_latency",
]


def kaffi_client_imports(path: Path) -> set[str]:
    """Every kaffi.client module ``path`` imports, TYPE_CHECKING blocks included."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "kaffi.client":
                found.update(f"kaffi.client.{alias.name}" for alias in node.names)
            elif node.module.startswith("kaffi.client."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kaffi.client."))
    return found


def test_the_import_graph_of_kaffi_client_has_no_cycle() -> None:
    graph = {
        f"kaffi.client.{path.stem}": kaffi_client_imports(path)
        & {f"kaffi.client.{p.stem}" for p in CLIENT_DIR.glob("*.py")}
        for path in CLIENT_DIR.glob("*.py")
        if path.stem != "__init__"
    }
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, " -> ".join([*visiting, module])
        if module in done:
            return
        visiting.append(module)
        for imported in graph.get(module, ()):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
    assert "kaffi.client.client" not in graph["kaffi.client.job"]
    assert "kaffi.client.aio" not in graph["kaffi.client.mutation"]


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_is_one_definition_made_into_two_methods(name: str) -> None:
    sync, awaited = getattr(Client, name), getattr(AsyncClient, name)
    assert inspect.isfunction(sync)
    assert not inspect.iscoroutinefunction(sync)
    assert inspect.iscoroutinefunction(awaited)
    assert sync.__doc__
    assert sync.__doc__ == awaited.__doc__
    assert inspect.signature(sync) == inspect.signature(awaited)
    # The sync client has the shared definition itself: no wrapper between the caller
    # and the command.
    assert sync.__qualname__ == f"ClientBase.{name}"
    assert awaited.__qualname__ == f"AsyncClient.{name}"
    assert awaited.__wrapped__ is sync


def test_a_subclass_keeps_the_methods_it_overrides() -> None:
    class Audited(Client):
        def push(self, job: Any) -> str:
            return "audited"

    assert Audited(settings=Client().settings).push({"jobtype": "x"}) == "audited"
    assert "ack" not in vars(Audited)  # inherited as it is, not made again


@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_an_encoded_job_is_pushed_as_it_is(
    client_class: type[Client] | type[AsyncClient],
    fake: FakeFaktory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fast path of every .delay(): no conversion, for both clients alike.
    def refuse(job: object) -> None:
        raise AssertionError(f"as_payload was called for {job!r}")

    monkeypatch.setattr(base_module, "as_payload", refuse)
    job = EncodedJob.from_checked(JobPayload.create(jobtype="A", jid="jid-00000001").to_wire())
    if client_class is Client:
        with Client(fake.url) as client:
            assert client.push(job) == "jid-00000001"
    else:

        async def main() -> str:
            async with AsyncClient(fake.url) as client:
                return await client.push(job)

        assert asyncio.run(main()) == "jid-00000001"
    assert fake.commands("PUSH") == ["PUSH " + job.data.decode()]


def test_plans_run_alike_on_both_drivers() -> None:
    def plan() -> base_module.Plan[list[str]]:
        seen = [(yield lambda: "first")]
        try:
            yield _fail
        except ValueError as exc:
            seen.append(str(exc))
        return seen

    def _fail() -> None:
        raise ValueError("step failed")

    async def awaited(value: object) -> object:
        return value

    def async_plan() -> base_module.Plan[list[str]]:
        seen = [(yield lambda: awaited("first"))]
        try:
            yield _async_fail
        except ValueError as exc:
            seen.append(str(exc))
        return seen

    async def _async_fail() -> None:
        raise ValueError("step failed")

    assert run_plan(plan()) == ["first", "step failed"]
    assert asyncio.run(run_plan_async(async_plan())) == ["first", "step failed"]


def test_a_failure_the_plan_does_not_catch_is_raised_by_the_driver() -> None:
    def plan() -> base_module.Plan[None]:
        yield _fail

    def _fail() -> None:
        raise KeyError("k")

    with pytest.raises(KeyError):
        run_plan(plan())
