"""Progress bars for the long steps of an export (tqdm; shown on a terminal only)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tqdm import tqdm

from .graph_export import GraphExport


def progress(graphs: Iterable[GraphExport], step: str) -> Iterator[GraphExport]:
    """``graphs``, one at a time, under a bar ``graphprune: {step}`` that names the graph being worked on;
    ``disable=None``: no bar where stderr is not a terminal (logs, CI, tests)."""
    bar = tqdm(graphs, desc=f"graphprune: {step}", unit="graph", disable=None)
    for graph in bar:
        bar.set_postfix_str(graph.name)
        yield graph


def byte_progress(step: str, total: int) -> tqdm:
    """A bar ``graphprune: {step}`` counting ``total`` bytes, shown on a terminal once the step takes over a
    second."""
    return tqdm(desc=f"graphprune: {step}", total=total, unit="B", unit_scale=True, delay=1.0, disable=None)
