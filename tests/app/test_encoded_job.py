"""``Task.encoded_job``, the bytes ``.delay()`` sends when nothing needs the payload as a
dict: for every kind of call they must equal what the dict path gives
(``EncodedJob.from_checked(task.payload(...))``), and every refusal must be the dict
path's refusal, word for word."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pydantic
import pytest

import kaffi.app.task as task_module
from kaffi import App
from kaffi.app.task import Task
from kaffi.errors import ValidationError
from kaffi.protocol.models import EncodedJob

FIXED_JID = "f" * 24


class Colour(enum.Enum):
    RED = "red"


class Point(pydantic.BaseModel):
    x: int
    tags: list[str] = []


@dataclasses.dataclass
class Box:
    width: float
    extra: dict[str, Any]


@pytest.fixture
def app() -> App:
    # Never connected: these tests only build bytes.
    return App("tcp://127.0.0.1:1")


@pytest.fixture(autouse=True)
def fixed_jid(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both paths get the same jid, so their bytes can be compared whole."""
    monkeypatch.setattr(task_module, "new_jid", lambda: FIXED_JID)


def dict_path(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> EncodedJob:
    return EncodedJob.from_checked(task.payload(args, kwargs))


def outcome(build: Any) -> tuple[str, Any]:
    try:
        job = build()
    except ValidationError as exc:
        return ("error", (str(exc), exc.field))
    return ("job", (job.jid, job.data))


def assert_same(task: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
    fast = outcome(lambda: task.encoded_job(args, kwargs))
    slow = outcome(lambda: dict_path(task, args, kwargs))
    assert fast == slow


def test_typed_arguments_encode_to_the_dict_paths_bytes(app: App) -> None:
    @app.task
    def typed(
        a: Any,
        b: int = 0,
        c: str = "",
        d: float = 1.0,
        when: datetime | None = None,
        day: date | None = None,
        span: timedelta | None = None,
        ident: uuid.UUID | None = None,
        amount: Decimal | None = None,
        colour: Colour | None = None,
        point: Point | None = None,
        box: Box | None = None,
        raw: bytes = b"",
        table: dict[int, str] | None = None,
    ) -> None:
        """Every kind of value the serializer converts."""

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((1,), {}),
        (('é ☃ \u2028 "quoted" \\ back',), {}),
        (({"k": [1, 2.5, None, True], "n": {"deep": []}},), {}),
        ((1e300, 5, "x", 1.5), {}),
        ((2**70, -1, "", -0.0), {}),
        ((None,), {"when": datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)}),
        ((None,), {"when": datetime(2020, 1, 2), "day": date(2000, 1, 1)}),
        ((None,), {"span": timedelta(seconds=3.5), "ident": uuid.UUID(int=7)}),
        ((None,), {"amount": Decimal("1.10"), "colour": Colour.RED}),
        ((None,), {"point": Point(x=1, tags=["a"]), "box": Box(0.1, {"z": [1]})}),
        ((None,), {"raw": b"abc", "table": {1: "a", 2: "b"}}),
        (({1: 2, 1.5: "x"},), {}),
        (((1, 2), {3}), {}),
        ((), {"a": 1, "d": 2.0}),
    ]
    for args, kwargs in calls:
        assert_same(typed, *args, **kwargs)
    # The fast path really ran (it was not the dict path both times).
    assert typed.signature.encode_json((1,), {}) == b"[1]"


def test_text_that_looks_like_a_non_finite_number_is_sent_as_it_is(app: App) -> None:
    @app.task
    def anything(value: Any) -> None:
        """Takes anything."""

    for value in ("NaN", {"Infinity": 1}, ["-Infinity", "NaNa"]):
        assert_same(anything, value)
        job = anything.encoded_job((value,), {})
        assert job.data == dict_path(anything, (value,), {}).data


def test_non_finite_and_unencodable_arguments_are_refused_as_by_the_dict_path(
    app: App,
) -> None:
    @app.task
    def anything(value: Any) -> None:
        """Takes anything."""

    @app.task
    def number(value: float) -> None:
        """Takes a float."""

    for value in (float("nan"), [1, float("inf")], {"x": float("-inf")}, "\ud800", object()):
        fast = outcome(lambda v=value: anything.encoded_job((v,), {}))
        assert fast[0] == "error"
        assert fast == outcome(lambda v=value: dict_path(anything, (v,), {}))
    fast = outcome(lambda: number.encoded_job((float("nan"),), {}))
    assert fast[0] == "error"
    assert "number" in fast[1][0]
    assert "'value'" in fast[1][0]
    assert fast == outcome(lambda: dict_path(number, (float("nan"),), {}))


def test_bad_calls_raise_the_same_errors(app: App) -> None:
    @app.task
    def add(a: int, b: int = 2) -> None:
        """Two numbers."""

    bad_calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        (("x",), {}),
        ((), {}),
        ((1, 2, 3), {}),
        ((1,), {"c": 1}),
        ((1,), {"a": 2}),
    ]
    for args, kwargs in bad_calls:
        fast = outcome(lambda a=args, k=kwargs: add.encoded_job(a, k))
        assert fast[0] == "error"
        assert fast == outcome(lambda a=args, k=kwargs: dict_path(add, a, k))


def test_varargs_tail_takes_the_dict_path_with_the_same_bytes(app: App) -> None:
    @app.task
    def many(first: int, *rest: str) -> None:
        """A head and a tail."""

    assert_same(many, 1)
    assert_same(many, 1, "a", "b")
    assert outcome(lambda: many.encoded_job((1, 2), {}))[0] == "error"


def test_options_shape_the_same_bytes(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(task_module, "format_rfc3339", lambda _when: "2030-01-01T00:00:00.000000Z")

    @app.task(queue="mail", retry=3, reserve_for=600, backtrace=5, custom={"ü": ["x", 1]})
    def send(to: str) -> None:
        """With every option."""

    assert_same(send, "a@b.c")
    assert_same(send.options(jid="a-fixed-jid-é"), "a@b.c")
    assert_same(send.options(countdown=30), "a@b.c")
    assert_same(send.options(at="2031-05-06T07:08:09Z"), "a@b.c")
    assert_same(send.options(retry=-1, jid="another-jid-1", countdown=timedelta(0)), "x")
    fixed = send.options(jid="a-fixed-jid-é").encoded_job(("x",), {})
    assert fixed.jid == "a-fixed-jid-é"


def test_a_template_with_look_alike_text_still_gives_the_same_bytes(app: App) -> None:
    @app.task(custom={"note": "NaN or Infinity"})
    def noted(value: int) -> None:
        """Its template holds the words."""

    assert_same(noted, 1)


def test_jids_are_fresh_per_job_without_the_patch(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.undo()

    @app.task
    def noop() -> None:
        """Nothing."""

    jobs = [noop.encoded_job((), {}) for _ in range(50)]
    assert len({job.jid for job in jobs}) == 50
    for job in jobs:
        assert f'"jid":"{job.jid}"'.encode() in job.data
