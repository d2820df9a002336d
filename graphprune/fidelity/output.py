"""A sweep's files: JSON, CSV, the agreement-vs-FLOPs chart with its Pareto front, and the kept-token pictures."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

COLUMNS = (
    "method",
    "flops_fraction",
    "kv_fraction",
    "prefill_time_ratio",
    "first_token_agreement",
    "sequence_agreement",
    "token_agreement",
    "mean_kl",
    "mean_rank",
    "max_rank",
)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, quality)`` that no other point beats: none with cost <= and quality >=, one
    of them strictly; sorted by cost."""
    front = [
        i
        for i, (cost, quality) in enumerate(points)
        if not any(c <= cost and q >= quality and (c, q) != (cost, quality) for c, q in points)
    ]
    return sorted(front, key=lambda i: points[i])


def save(result, out, pictures: bool = True) -> list[Path]:
    """``SweepResult.save``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "model": result.model,
        "n_samples": result.n_samples,
        "max_new_tokens": result.max_new_tokens,
        "batch_size": result.batch_size,
        "methods": [row.summary() | {"per_sample": row.per_sample} for row in result.results],
    }
    written = [out / "sweep.json", out / "sweep.csv", out / "sweep.png"]
    written[0].write_text(json.dumps(document, indent=1) + "\n")
    with written[1].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(row.summary() for row in result.results)
    chart(result, written[2])
    for name, report in result.reports.items() if pictures else ():
        if report.layouts is None:  # a family without a picture layout (graphprune.plot.FAMILIES)
            logger.warning("graphprune sweep: no kept-token picture for %s: its family has no picture layout", name)
            continue
        written.append(out / f"kept-{_slug(name)}.png")
        report.plot(written[-1])
    return written


def chart(result, path, metric: str = "first_token_agreement"):
    """The PNG at ``path``: ``metric`` against the FLOPs fraction, one point per method and the unpruned model at
    (1, 1), the Pareto front joined and ringed; returns the matplotlib Figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("graphprune's sweep chart needs matplotlib: pip install 'graphprune[plot]'") from None
    points = [(row.flops_fraction, getattr(row, metric)) for row in result.results]
    front = pareto_front(points)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    ax.scatter(*zip(*points, strict=True), color="tab:blue", label="method", zorder=3)
    ax.scatter([1.0], [1.0], color="black", marker="*", s=120, label="unpruned", zorder=3)
    ax.plot(
        *zip(*(points[i] for i in front), strict=True),
        color="tab:orange",
        marker="o",
        mfc="none",
        ms=12,
        label="Pareto front",
        zorder=2,
    )
    for row, (x, y) in zip(result.results, points, strict=True):
        ax.annotate(row.method, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("decoder FLOPs, fraction of unpruned (paper formula)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{result.model}: {result.n_samples} samples, {result.max_new_tokens} new tokens", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return fig


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", name)
