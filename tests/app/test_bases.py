"""kaffi._bases: the forwarded property and the Closing/AsyncClosing context managers,
on their own and as the public classes use them."""

from __future__ import annotations

import asyncio

import pytest

from kaffi import App
from kaffi._bases import AsyncClosing, Closing, forwarded


class _Inner:
    def __init__(self) -> None:
        self.count = 3


class _Outer:
    count = forwarded[int]("inner.count", "How many.")

    def __init__(self) -> None:
        self.inner = _Inner()


def test_forwarded_reads_through_and_follows_changes() -> None:
    outer = _Outer()
    assert outer.count == 3
    outer.inner.count = 7
    assert outer.count == 7
    outer.inner = _Inner()
    assert outer.count == 3


def test_forwarded_is_a_documented_read_only_property() -> None:
    assert isinstance(_Outer.count, property)
    assert _Outer.count.__doc__ == "How many."
    outer = _Outer()
    with pytest.raises(AttributeError):
        outer.count = 4  # type: ignore[assignment]
    assert outer.count == 3


def test_public_forwarded_properties_keep_their_docs_and_values() -> None:
    app = App(testing="inline")

    @app.task(queue="low", retry=3)
    def add(x: int) -> int:
        return x

    assert (add.queue, add.retry, add.at, add.countdown) == ("low", 3, None, None)
    assert type(add).queue.__doc__ == "The queue jobs of this task go to."
    with pytest.raises(AttributeError):
        add.queue = "other"  # type: ignore[assignment]


class _Resource(Closing):
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class _AsyncResource(AsyncClosing):
    def __init__(self) -> None:
        self.closed = 0

    async def close(self) -> None:
        self.closed += 1


def test_closing_returns_itself_and_closes_once_even_on_error() -> None:
    resource = _Resource()
    with resource as entered:
        assert entered is resource
        assert resource.closed == 0
    assert resource.closed == 1
    with pytest.raises(KeyError), _Resource() as failing:
        raise KeyError("boom")
    assert failing.closed == 1


def test_async_closing_returns_itself_and_closes_once_even_on_error() -> None:
    async def main() -> tuple[int, int]:
        resource = _AsyncResource()
        async with resource as entered:
            assert entered is resource
            assert resource.closed == 0
        failing = _AsyncResource()
        with pytest.raises(KeyError):
            async with failing:
                raise KeyError("boom")
        return resource.closed, failing.closed

    assert asyncio.run(main()) == (1, 1)
