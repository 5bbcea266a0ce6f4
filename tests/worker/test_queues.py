"""Queue order: strict lines built once, weighted orders drawn per fetch."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kaffi.errors import ValidationError
from kaffi.worker.queues import QueueOrder, parse_queues


def test_strict_order_is_the_given_order_every_time() -> None:
    order = parse_queues("critical, default,low")
    assert not order.weighted
    assert order.fetch_line() == b"FETCH critical default low\r\n"
    assert order.fetch_line() is order.fetch_line()
    assert order.describe() == "critical,default,low"


def test_a_list_of_items_is_the_same_as_a_comma_string() -> None:
    assert parse_queues(["a", "b,c"]).names == ("a", "b", "c")


def test_weighted_order_draws_a_permutation_per_fetch() -> None:
    order = QueueOrder(["critical", "default"], [3, 1], rng=random.Random(7))
    firsts = Counter(order.order()[0] for _ in range(4000))
    assert set(firsts) == {"critical", "default"}
    # Weight 3 against 1: critical comes first about three times in four.
    assert 0.70 < firsts["critical"] / 4000 < 0.80
    for _ in range(20):
        line = order.fetch_line()
        assert line in (b"FETCH critical default\r\n", b"FETCH default critical\r\n")


def test_equal_weights_mean_strict_order() -> None:
    order = parse_queues("a:2,b:2")
    assert not order.weighted
    assert order.fetch_line() == b"FETCH a b\r\n"


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("", "at least one queue"),
        (" , ,", "at least one queue"),
        ("bad queue!", "invalid queue name"),
        ("a:3,b", "every queue a weight or none"),
        ("a:x", "whole number"),
        ("a:0,b:1", "between 1 and"),
        ("a,a", "listed twice"),
    ],
)
def test_bad_queue_specs_are_refused_with_a_clear_message(spec: str, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        parse_queues(spec)
