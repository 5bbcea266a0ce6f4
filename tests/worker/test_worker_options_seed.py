"""``middleware=`` and ``registry=``: the Node worker's options, on kaffi's Worker."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kaffi.app import App
from kaffi.app.execution import JobContext
from kaffi.errors import ValidationError
from kaffi.worker import Worker
from tests.support import running, wait_until


def test_middleware_runs_after_the_apps_own_and_registry_adds_jobtypes(app: App) -> None:
    order: list[str] = []

    def app_mw(ctx: JobContext, next: Callable[[], Any]) -> Any:
        order.append(f"app {ctx.jobtype}")
        return next()

    async def worker_mw(ctx: JobContext, next: Callable[[], Any]) -> None:
        order.append(f"worker {ctx.jobtype}")
        await next()

    @app.task
    def greet(name: str) -> None:
        order.append(f"app's greet {name}")

    def node_style(a: int, b: int) -> None:
        order.append(f"registry add {a + b}")

    def replaced_greet(name: str) -> None:
        order.append(f"registry greet {name}")

    app.use(app_mw)
    app.client.push({"jobtype": "add", "args": [1, 2]})
    worker = app.worker(concurrency=1, middleware=[worker_mw], registry={"add": node_style})
    assert isinstance(worker, Worker)
    with running(worker):
        wait_until(lambda: worker.processed == 1, "the registry's job")
    assert order == ["app add", "worker add", "registry add 3"]
    assert worker.failed == 0
    # The registry is the worker's alone: the App does not gain the jobtype.
    assert "add" not in app.tasks

    order.clear()
    greet.delay("ada")
    other = Worker(app, concurrency=1, registry={"greet": replaced_greet})
    with running(other):
        wait_until(lambda: other.processed == 1, "the replaced task's job")
    assert order == ["app greet", "registry greet ada"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"middleware": [42]}, "middleware"),
        ({"middleware": print}, "middleware"),
        ({"registry": {"": print}}, "registry"),
        ({"registry": {"job": "not a function"}}, "registry"),
    ],
)
def test_bad_middleware_or_registry_is_one_clear_error(
    app: App, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError, match=f"^{field} must ") as caught:
        app.worker(**options)
    assert caught.value.field == field
