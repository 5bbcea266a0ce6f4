"""The benchmark chart: jobs per second by operation and client, as an SVG.

``python -m bench.chart RESULTS.json OUT.svg`` runs in the bench-only virtualenv
(``bench/.env/venv``), where :mod:`bench.peers` installs matplotlib; kaffi itself never
depends on matplotlib. The module imports only the standard library and
:mod:`bench.harness`'s result types at the top, and matplotlib inside :func:`draw`, so
the rest of the suite imports it freely.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from bench.names import CLIENT_ORDER, OPERATION_ORDER, RAW
from bench.results import Results, Throughput

__all__ = ["draw", "main"]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
_KAFFI_COLOUR = "#1f77b4"
_RAW_COLOUR = "#7f7f7f"


def _colour(client: str, peers: list[str]) -> str:
    if client.startswith("kaffi"):
        return _KAFFI_COLOUR
    if client == RAW:
        return _RAW_COLOUR
    return _PALETTE[1 + peers.index(client) % (len(_PALETTE) - 1)]


def _rows(results: Results) -> list[Throughput]:
    op_rank = {op: i for i, op in enumerate(OPERATION_ORDER)}
    client_rank = {c: i for i, c in enumerate(CLIENT_ORDER)}
    return sorted(
        results.throughputs,
        key=lambda t: (
            op_rank.get(t.operation, 99),
            client_rank.get(t.client, 50 if t.client != RAW else 60),
            t.client,
        ),
    )


def draw(results: Results, out: Path) -> None:
    """Write a horizontal bar chart (log scale: rates span three orders of magnitude)."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small, diffable SVG
    matplotlib.rcParams["svg.hashsalt"] = "kaffi-bench"  # stable ids between runs

    rows = _rows(results)
    peers = sorted({t.client for t in rows if not t.client.startswith("kaffi") and t.client != RAW})
    labels, values, colours, positions = [], [], [], []
    y = 0.0
    previous = None
    separators = []
    for t in rows:
        if previous is not None and t.operation != previous:
            y += 0.8
            separators.append(y - 0.9)
        previous = t.operation
        labels.append(f"{t.operation}  |  {t.client}")
        values.append(t.rate)
        colours.append(_colour(t.client, peers))
        positions.append(y)
        y += 1.0

    fig, ax = plt.subplots(figsize=(11, 0.32 * len(rows) + 1.6))
    ax.barh(positions, values, color=colours, height=0.8)
    ax.set_yticks(positions)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("jobs per second (log scale; longer is better)")
    for pos, value in zip(positions, values, strict=True):
        ax.text(value * 1.05, pos, f"{value:,.0f}", va="center", fontsize=7)
    for sep in separators:
        ax.axhline(sep, color="#dddddd", linewidth=0.6)
    if values:
        ax.set_xlim(min(values) / 2, max(values) * 3)
    title = "kaffi and the other Faktory clients on one server"
    if results.meta.get("date"):
        title += f" ({results.meta['date']})"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format=out.suffix.lstrip(".") or "svg", metadata={"Date": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m bench.chart RESULTS.json OUT.svg", file=sys.stderr)
        return 2
    results = Results.from_json(Path(args[0]).read_text())
    draw(results, Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
