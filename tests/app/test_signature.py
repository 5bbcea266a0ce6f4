"""Binding, validation, serialisation and conversion back of task arguments (no I/O)."""

from __future__ import annotations

import dataclasses
import enum
import math
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

from kaffi.app.signature import TaskSignature
from kaffi.errors import ArgumentsError, ConfigurationError, ValidationError


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    street: str
    number: int


@dataclasses.dataclass
class Point:
    x: float
    y: float


def sig(fn: Any, name: str = "t") -> TaskSignature:
    return TaskSignature(fn, name)


# -- binding ------------------------------------------------------------------------------


def three(a: int, b: int = 2, c: int = 3) -> None:
    del a, b, c


def test_positional_arguments_travel_as_given() -> None:
    assert sig(three).encode((1, 5, 7), {}) == [1, 5, 7]


def test_keyword_arguments_are_sent_in_parameter_order() -> None:
    assert sig(three).encode((), {"c": 9, "b": 8, "a": 7}) == [7, 8, 9]


def test_trailing_defaults_are_not_sent() -> None:
    assert sig(three).encode((1,), {}) == [1]
    assert sig(three).encode((1,), {"b": 4}) == [1, 4]


def test_a_skipped_default_in_the_middle_is_sent_with_its_value() -> None:
    assert sig(three).encode((1,), {"c": 5}) == [1, 2, 5]


def test_missing_required_argument_names_it() -> None:
    with pytest.raises(ValidationError, match=r"task 't': argument 'a' is required") as info:
        sig(three).encode((), {"b": 1})
    assert info.value.field == "a"


def test_too_many_positional_arguments() -> None:
    with pytest.raises(ValidationError, match="takes 3 positional arguments but 4 were given"):
        sig(three).encode((1, 2, 3, 4), {})


def test_unknown_keyword_argument() -> None:
    with pytest.raises(ValidationError, match="argument 'd' is not a parameter") as info:
        sig(three).encode((1,), {"d": 1})
    assert info.value.field == "d"


def test_argument_given_twice() -> None:
    with pytest.raises(ValidationError, match="'a' was given both by position and by keyword"):
        sig(three).encode((1,), {"a": 1})


def test_positional_only_parameter_by_keyword() -> None:
    def fn(a: int, /, b: int) -> None:
        del a, b

    assert sig(fn).encode((1, 2), {}) == [1, 2]
    with pytest.raises(ValidationError, match="'a' is positional-only"):
        sig(fn).encode((), {"a": 1, "b": 2})


def test_varargs_are_appended_and_validated() -> None:
    def fn(a: int, *rest: int) -> None:
        del a, rest

    s = sig(fn)
    assert s.encode((1, 2, "3"), {}) == [1, 2, 3]
    assert s.decode([1, "2", 3]) == ([1, 2, 3], {})
    with pytest.raises(
        ValidationError, match=r"argument '\*rest\[1\]': Input should be a valid integer"
    ):
        s.encode((1, 2, "x"), {})


def test_keyword_only_with_default_travels_after_the_positionals() -> None:
    def fn(a: int, *, flag: bool = False) -> None:
        del a, flag

    s = sig(fn)
    assert s.encode((1,), {"flag": True}) == [1, True]
    assert s.decode([1, True]) == ([1], {"flag": True})
    assert s.decode([1]) == ([1], {})


def test_keyword_only_after_varargs_cannot_be_sent() -> None:
    def fn(*items: int, flag: bool = False) -> None:
        del items, flag

    s = sig(fn)
    assert s.encode((1, 2), {}) == [1, 2]
    with pytest.raises(ValidationError, match="'flag' is keyword-only after \\*items"):
        s.encode((1,), {"flag": True})


def test_var_keyword_is_refused_at_declaration() -> None:
    def fn(a: int, **extra: Any) -> None:
        del a, extra

    with pytest.raises(ConfigurationError, match=r"task 'send': \*\*extra cannot be sent"):
        sig(fn, "send")


def test_keyword_only_without_default_is_refused_at_declaration() -> None:
    def fn(a: int, *, to: str) -> None:
        del a, to

    with pytest.raises(ConfigurationError, match="keyword-only parameter 'to' has no default"):
        sig(fn)


# -- validation ---------------------------------------------------------------------------


def test_wrong_type_names_task_parameter_and_problem() -> None:
    def fn(user_id: int, email: str) -> None:
        del user_id, email

    with pytest.raises(ValidationError) as info:
        sig(fn, "send_email").encode(("abc", "x@y.z"), {})
    message = str(info.value)
    assert "task 'send_email'" in message
    assert "argument 'user_id'" in message
    assert "valid integer" in message
    assert "'abc'" in message
    assert info.value.field == "user_id"


def test_nested_problem_shows_the_path() -> None:
    def fn(address: Address) -> None:
        del address

    with pytest.raises(ValidationError, match=r"argument 'address'\['number'\]"):
        sig(fn).encode(({"street": "Main", "number": "x"},), {})


def test_value_that_cannot_become_json_names_the_parameter() -> None:
    def fn(a: int, payload: Any) -> None:
        del a, payload

    with pytest.raises(ValidationError, match="argument 'payload' cannot become JSON") as info:
        sig(fn).encode((1, object()), {})
    assert info.value.field == "payload"


@pytest.mark.parametrize("annotation", [bytes, Any])
def test_bytes_that_are_not_utf8_name_the_parameter(annotation: Any) -> None:
    def fn(a: int, blob: bytes, *rest: Any) -> None:
        del a, blob, rest

    fn.__annotations__["blob"] = annotation
    signature = sig(fn)
    assert signature.encode((1, b"ok"), {}) == [1, "ok"]
    assert signature.encode_json((1, b"ok"), {}) == b'[1,"ok"]'
    # The JSON fast path hands the call back to encode(), which names the problem.
    assert signature.encode_json((1, b"\xff\xfe"), {}) is None
    with pytest.raises(ValidationError, match="argument 'blob' cannot become JSON") as info:
        signature.encode((1, b"\xff\xfe"), {})
    assert info.value.field == "blob"
    assert "utf-8" in str(info.value)
    # In the *args tail too (encode_json hands such calls to encode).
    with pytest.raises(ValidationError, match=r"argument '\*rest\[0\]' cannot become JSON"):
        signature.encode((1, b"ok", b"\xff"), {})


def test_unannotated_parameters_accept_json_values() -> None:
    def fn(a, b):  # type: ignore[no-untyped-def]
        del a, b

    assert sig(fn).encode(({"k": [1, 2]}, None), {}) == [{"k": [1, 2]}, None]


def test_nan_is_refused_for_floats() -> None:
    def fn(x: float) -> None:
        del x

    with pytest.raises(ValidationError, match="argument 'x'"):
        sig(fn).encode((math.nan,), {})


class Reading(BaseModel):
    value: float


@pytest.mark.parametrize(
    ("args", "where"),
    [
        ((math.nan,), "argument 'loose'"),
        (({"k": [1, math.inf]},), "argument 'loose'['k'][1]"),
        ((None, Reading(value=-math.inf)), "argument 'model'['value']"),
        ((None, None, Point(math.nan, 1.0)), "argument 'point'['x']"),
        ((None, None, None, 1.0, math.nan), "argument '*rest[1]'"),
    ],
)
def test_non_finite_floats_hidden_in_loose_types_are_refused(
    args: tuple[Any, ...], where: str
) -> None:
    # Any, models and dataclasses do not refuse NaN themselves; it must not become a silent
    # null (or invalid JSON such as Infinity) on the wire.
    def fn(
        loose: Any = None, model: Reading | None = None, point: Point | None = None, *rest: Any
    ) -> None:
        del loose, model, point, rest

    with pytest.raises(
        ValidationError, match=r"is not a finite number\); nothing was sent"
    ) as info:
        sig(fn).encode(args, {})
    assert where in str(info.value)


def test_finite_floats_in_loose_types_pass() -> None:
    def fn(loose: Any, model: Reading, *rest: Any) -> None:
        del loose, model, rest

    out = sig(fn).encode(({"k": [1.5]}, Reading(value=2.5), 3.5), {})
    assert out == [{"k": [1.5]}, {"value": 2.5}, 3.5]


def test_annotated_constraints_apply() -> None:
    def fn(n: Annotated[int, Field(gt=0)]) -> None:
        del n

    assert sig(fn).encode((3,), {}) == [3]
    with pytest.raises(ValidationError, match="greater than 0"):
        sig(fn).encode((0,), {})


def test_none_default_widens_the_type() -> None:
    def fn(a: int, limit: int = None) -> None:  # type: ignore[assignment]  # noqa: RUF013
        del a, limit

    assert sig(fn).encode((1,), {"limit": None}) == [1, None]


def test_lax_conversion_of_compatible_input() -> None:
    def fn(n: int, when: date) -> None:
        del n, when

    assert sig(fn).encode(("5", "2024-02-03"), {}) == [5, "2024-02-03"]


# -- serialisation and conversion back ----------------------------------------------------


def rich(
    when: datetime,
    day: date,
    ident: uuid.UUID,
    amount: Decimal,
    colour: Colour,
    level: Level,
    address: Address,
    point: Point,
    tags: set[str],
    pair: tuple[int, str],
    wait: timedelta,
) -> None:
    del when, day, ident, amount, colour, level, address, point, tags, pair, wait


RICH_VALUES = (
    datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc),
    date(2024, 5, 6),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("10.25"),
    Colour.BLUE,
    Level.HIGH,
    Address(street="Main", number=5),
    Point(1.5, 2.5),
    {"a"},
    (1, "x"),
    timedelta(seconds=90),
)


def test_rich_values_become_json_compatible() -> None:
    out = sig(rich).encode(RICH_VALUES, {})
    # A timedelta is an ISO 8601 duration; pydantic before 2.6 writes 90 s as "PT90S",
    # later ones as "PT1M30S". Both read back as the same timedelta (next test), so the
    # wire stays compatible across the pydantic versions pyproject.toml allows.
    assert out[-1] in ("PT1M30S", "PT90S")
    out[-1] = "PT1M30S"
    assert out == [
        "2024-05-06T07:08:09.123456Z",
        "2024-05-06",
        "12345678-1234-5678-1234-567812345678",
        "10.25",
        "blue",
        2,
        {"street": "Main", "number": 5},
        {"x": 1.5, "y": 2.5},
        ["a"],
        [1, "x"],
        "PT1M30S",
    ]


def test_rich_values_convert_back_to_the_annotated_types() -> None:
    import json

    s = sig(rich)
    wire = json.loads(json.dumps(s.encode(RICH_VALUES, {})))
    args, kwargs = s.decode(wire)
    assert kwargs == {}
    assert args == list(RICH_VALUES)
    assert isinstance(args[4], Colour)
    assert isinstance(args[6], Address)
    assert isinstance(args[7], Point)
    assert isinstance(args[2], uuid.UUID)
    assert isinstance(args[3], Decimal)


def test_decode_too_many_arguments() -> None:
    with pytest.raises(
        ArgumentsError, match=r"job has 4 arguments but the task takes at most 3 \(a, b, c\)"
    ):
        sig(three, "t").decode([1, 2, 3, 4])


def test_decode_missing_arguments() -> None:
    with pytest.raises(
        ArgumentsError, match="job has 0 arguments but the task requires 1: missing 'a'"
    ):
        sig(three).decode([])


def test_decode_wrong_type_names_the_parameter() -> None:
    with pytest.raises(
        ArgumentsError, match=r"task 't': argument 'b': Input should be a valid integer"
    ):
        sig(three).decode([1, "nope"])


def test_decode_fills_nothing_for_trailing_defaults() -> None:
    assert sig(three).decode([1]) == ([1], {})


def test_no_parameters() -> None:
    def fn() -> None:
        return None

    s = sig(fn)
    assert s.encode((), {}) == []
    assert s.decode([]) == ([], {})
    with pytest.raises(ArgumentsError, match="at most 0"):
        s.decode([1])


# -- type hints ---------------------------------------------------------------------------


def later(item: LaterModel) -> None:
    del item


def test_forward_reference_defined_after_the_task_resolves_on_first_use() -> None:
    s = sig(later)
    assert s.encode(({"v": 1},), {}) == [{"v": 1}]
    args, _ = s.decode([{"v": 2}])
    assert args == [LaterModel(v=2)]


class LaterModel(BaseModel):
    v: int


def test_unresolvable_type_hint_fails_with_a_clear_error() -> None:
    def fn(item: DoesNotExist) -> None:  # type: ignore[name-defined]  # noqa: F821
        del item

    s = sig(fn, "broken")
    with pytest.raises(ConfigurationError, match="task 'broken': cannot resolve its type hints"):
        s.encode((1,), {})


def test_names_lists_the_array_layout() -> None:
    def fn(a: int, b: str = "", *rest: int) -> None:
        del a, b, rest

    assert sig(fn).names == ["a", "b", "*rest"]
