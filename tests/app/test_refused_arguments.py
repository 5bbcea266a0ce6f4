"""The refused-argument extension point (kaffi.app.signature.refuse_argument_type), with a
class of its own: no framework involved (kaffi.contrib.django registers Django's Model)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from kaffi import App
from kaffi.app.signature import refuse_argument_type, refused_types
from kaffi.errors import ConfigurationError, ValidationError


@dataclass
class Row:
    """A dataclass pydantic could send as JSON, refused anyway once registered."""

    pk: int


class SpecialRow(Row):
    """A subclass: refused too."""


ADVICE = "pass row.pk instead"


@pytest.fixture
def refusing() -> Iterator[None]:
    refuse_argument_type(Row, ADVICE)
    try:
        yield
    finally:
        refuse_argument_type(Row, None)


def test_a_registered_class_is_refused_at_delay_even_when_it_could_be_sent(
    refusing: None,
) -> None:
    app = App(testing="fake")

    @app.task
    def touch(item: Any, rest: list[Any]) -> None:
        """Takes anything."""

    with pytest.raises(ValidationError) as info:
        touch.delay(Row(1), [])
    message = str(info.value)
    assert message.startswith("task 'touch': argument 'item' is a ")
    assert "Row(pk=1)" in message
    assert message.endswith(f"{ADVICE}; nothing was sent")
    assert info.value.field == "item"
    with pytest.raises(ValidationError, match=r"argument 'item' is a .*SpecialRow"):
        touch.delay(SpecialRow(2), [])
    assert len(app.testing.jobs) == 0
    # Inside a container only a value that cannot become JSON is looked at (the check
    # costs one isinstance per argument, not a walk of every list): an object() there
    # fails, and the error names the registered class found beside it first.
    with pytest.raises(ValidationError, match=r"argument 'rest'\[1\]\['row'\] is a .*Row"):
        touch.delay(1, [2, {"row": Row(3), "other": object()}])
    touch.delay(1, [2, {"row": Row(3)}])
    assert app.testing.jobs[0].args == [1, [2, {"row": {"pk": 3}}]]


def test_a_value_of_the_wrong_type_gets_the_advice(refusing: None) -> None:
    app = App(testing="fake")

    @app.task
    def load(row_id: int) -> None:
        """Takes a primary key."""

    with pytest.raises(ValidationError, match=f"argument 'row_id' is a .*Row.*{ADVICE}"):
        load.delay(Row(4))  # type: ignore[arg-type]


def test_an_annotation_naming_a_registered_class_is_refused_at_declaration(
    refusing: None,
) -> None:
    app = App(testing="fake")
    with pytest.raises(ConfigurationError, match=f"parameter 'row' is annotated with .*{ADVICE}"):

        @app.task
        def one(row: Row) -> None:
            """Refused."""

    with pytest.raises(ConfigurationError, match="parameter 'rows'"):

        @app.task
        def many(rows: list[Row] | None = None) -> None:
            """Refused."""


def test_registration_is_checked_and_can_be_undone() -> None:
    with pytest.raises(ConfigurationError, match="needs a class"):
        refuse_argument_type("Row", ADVICE)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="needs the advice"):
        refuse_argument_type(Row, " ")
    refuse_argument_type(Row, ADVICE)
    assert refused_types()[Row] == ADVICE
    refuse_argument_type(Row, None)
    assert Row not in refused_types()
    app = App(testing="fake")

    @app.task
    def keep(row: Row) -> None:
        """Accepted again: a dataclass travels as JSON."""

    keep.delay(Row(5))
    assert app.testing.jobs[0].args == [{"pk": 5}]
