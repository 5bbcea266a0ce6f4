"""Which queues a worker fetches from, and in which order for each FETCH.

Faktory tries the queues of one FETCH strictly in the order given. Two ways to ask:

- ``critical,default,low``: strict order, the same FETCH line every time (built once);
- ``critical:3,default:1``: weighted random order, drawn again for every FETCH, so a
  busy ``critical`` queue cannot starve ``default`` forever. A queue of weight 3 comes
  first three times as often as one of weight 1 (each weight unit is one ticket; the
  order is the tickets shuffled, first ticket of each queue wins).

This module does no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from kaffi.errors import ValidationError
from kaffi.protocol.commands import encode_fetch
from kaffi.protocol.models import validate_queue_name

__all__ = ["QueueOrder", "parse_queues"]

#: Weights above this would make the ticket list (and each draw) needlessly large.
MAX_WEIGHT = 100


class QueueOrder:
    """The queues of one worker and the FETCH line for the next fetch.

    ``weights`` is None for strict order. The FETCH lines of every order drawn so far are
    cached, so a fetch costs one shuffle and one dict look-up, never a re-encode.
    """

    __slots__ = ("_lines", "_rng", "_strict_line", "_tickets", "names", "weights")

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[int] | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not names:
            raise ValidationError("a worker needs at least one queue", field="queues")
        for name in names:
            validate_queue_name(name, field="queues")
        if len(set(names)) != len(names):
            raise ValidationError(f"queues listed twice in {list(names)!r}", field="queues")
        self.names: tuple[str, ...] = tuple(names)
        self.weights: tuple[int, ...] | None = None
        self._rng = rng or random.Random()
        self._lines: dict[tuple[str, ...], bytes] = {}
        self._tickets: list[str] = []
        self._strict_line: bytes | None = None
        if weights is None or len(set(weights)) <= 1:
            # Equal weights order nothing: strict order is cheaper and says the same.
            self._strict_line = encode_fetch(*self.names)
            return
        if len(weights) != len(names):
            raise ValidationError("one weight per queue is needed", field="queues")
        for w in weights:
            if not 1 <= w <= MAX_WEIGHT:
                raise ValidationError(
                    f"queue weights must be between 1 and {MAX_WEIGHT}, got {w}", field="queues"
                )
        self.weights = tuple(weights)
        self._tickets = [n for n, w in zip(self.names, self.weights, strict=True) for _ in range(w)]

    @property
    def weighted(self) -> bool:
        return self.weights is not None

    def order(self) -> tuple[str, ...]:
        """The queue order for the next FETCH."""
        if self._strict_line is not None:
            return self.names
        tickets = self._tickets[:]
        self._rng.shuffle(tickets)
        return tuple(dict.fromkeys(tickets))

    def fetch_line(self) -> bytes:
        """The FETCH command for the next fetch."""
        if self._strict_line is not None:
            return self._strict_line
        order = self.order()
        line = self._lines.get(order)
        if line is None:
            line = self._lines[order] = encode_fetch(*order)
        return line

    def describe(self) -> str:
        """The queues as the command line takes them: ``a,b`` or ``a:3,b:1``."""
        if self.weights is None:
            return ",".join(self.names)
        return ",".join(f"{n}:{w}" for n, w in zip(self.names, self.weights, strict=True))

    def __repr__(self) -> str:
        kind = "strict" if self.weights is None else "weighted"
        return f"QueueOrder({kind} {self.describe()})"


def parse_queues(spec: str | Iterable[str]) -> QueueOrder:
    """Read ``"critical,default"``, ``"critical:3,default:1"`` or a list of such items.

    Either every queue has a weight or none does: a mix is refused, because it is unclear
    what an unweighted queue should weigh.
    """
    items: list[str] = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        items.extend(p.strip() for p in part.split(",") if p.strip())
    if not items:
        raise ValidationError("a worker needs at least one queue", field="queues")
    names: list[str] = []
    weights: list[int] = []
    for item in items:
        name, sep, weight = item.partition(":")
        names.append(name.strip())
        if sep:
            try:
                weights.append(int(weight))
            except ValueError:
                raise ValidationError(
                    f"queue weight must be a whole number in {item!r} (like critical:3)",
                    field="queues",
                ) from None
    if weights and len(weights) != len(names):
        raise ValidationError(
            f"give every queue a weight or none: {','.join(items)!r}", field="queues"
        )
    return QueueOrder(names, weights or None)
