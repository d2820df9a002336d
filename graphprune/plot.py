"""Which visual unit is which cell of which picture (``visual_layouts``, per family, no pixels), and the PNG of
what a report kept (``draw``, matplotlib: the ``plot`` extra).

A unit is what ``Report.kept`` lists: a sequence position (FastV) or a feature row (CrossAttentionTrim). A
family's layout function (``graphprune/families/<name>/layout.py``, its record's ``plot_layout``) reads only the
model config and the inputs the report saw, and where it can, runs the model's own packing code on cell
coordinates instead of features (LLaVA-NeXT's and LLaVA-OneVision's packing, InternVL's and Idefics3's pixel
shuffle), so the map is the model's. A token a pixel shuffle, pooling or downscaling merged from several patches
has the cell of their region in a grid of such tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .families import FAMILIES, family_named, resolve


@dataclass(frozen=True)
class Panel:
    """One picture a sample's visual units cover: an image, a crop grid, a video frame or a tile."""

    title: str
    rows: int
    cols: int
    pixels: torch.Tensor | None = None  # [3, H, W] shown under the grid, any range (scaled for display)
    tile: tuple[int, int] | None = None  # Mllama: (image, tile), the entry of ``Report.kept_per_tile``


@dataclass(frozen=True)
class SampleLayout:
    """A sample's panels and, per visual unit (``units``, what ``Report.kept`` holds), its ``(panel, row, col)``
    cell (``cells``; -1 for a unit without one: a CLS feature, a newline token, a padding tile's features)."""

    panels: tuple[Panel, ...]
    units: torch.Tensor  # [n] long
    cells: torch.Tensor  # [n, 3] long

    def highlighted(self, kept: torch.Tensor) -> set[tuple[int, int, int]]:
        """The cells of the kept units."""
        cells = self.cells[torch.isin(self.units, kept.to(self.units.device))]
        return {tuple(cell) for cell in cells.tolist() if cell[0] >= 0}


# A picture: its panels and the cell of each of its units (panel indices local to the picture).
Picture = tuple[list[Panel], torch.Tensor]


def raster(rows: int, cols: int, panel: int = 0, cls: bool = False) -> torch.Tensor:
    """The ``(panel, row, col)`` of a row-major grid's units, after a CLS unit (no cell) if ``cls``."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    cells = torch.stack([torch.full_like(r, panel), r, c], dim=-1).reshape(-1, 3)
    return torch.cat([torch.full((1, 3), -1), cells]) if cls else cells


def clip_side(model: nn.Module) -> int:
    vision = model.config.vision_config
    return vision.image_size // vision.patch_size


def stitched(crops: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``crops[1 : 1 + h·w]`` (after the base image), an ``h x w`` grid row-major, as one ``[C, H, W]`` picture."""
    channels, height, width = crops.shape[1:]
    grid = crops[1 : 1 + h * w].reshape(h, w, channels, height, width)
    return grid.permute(2, 0, 3, 1, 4).reshape(channels, h * height, w * width)


def or_empty(tensor: torch.Tensor | None):
    return tensor if tensor is not None else []


def shuffled_cells(shuffle: Callable[[torch.Tensor], torch.Tensor], side: int) -> tuple[int, torch.Tensor]:
    """The model's own pixel shuffle (``shuffle``: a tile's ``[side, side, C]`` patch features to its
    ``[tokens, C·k]`` tokens) run on each patch's ``(row, col)``: the side of the token grid, and per token its
    ``(row, col)`` there, the block of the ``k`` patches it merges."""
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    sources = shuffle(torch.stack([r, c], dim=-1).float())
    sources = sources.reshape(len(sources), -1, 2).long()  # per token, its patches' (row, col)
    grid = math.isqrt(len(sources))
    return grid, sources.amin(dim=1) // (side // grid)


def tile_cells(cells: torch.Tensor, panel: int) -> torch.Tensor:
    return torch.cat([torch.full((len(cells), 1), panel), cells], dim=1)


def token_layouts(pictures: dict[int, list[Picture]], inputs: dict) -> list[SampleLayout] | None:
    """Each sample's visual tokens matched with the pictures of their token id: a picture's units are the next
    positions holding its id (in batch order, as the model scatters its features), its panels placed in the
    order of their first position; None for inputs without ``input_ids``."""
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        return None
    queues = {token: iter(items) for token, items in pictures.items()}
    layouts = []
    for row in input_ids.cpu():
        found = []  # per picture: its positions, panels and cells
        for token, queue in queues.items():
            positions = (row == token).nonzero().flatten()
            while len(positions):
                picture_panels, picture_cells = next(queue)
                found.append((positions[: len(picture_cells)], picture_panels, picture_cells))
                positions = positions[len(picture_cells) :]
        panels, units, cells = [], [], []
        for picture_units, picture_panels, picture_cells in sorted(found, key=lambda picture: int(picture[0][0])):
            offset = torch.tensor([len(panels), 0, 0])
            cells.append(torch.where(picture_cells[:, :1] >= 0, picture_cells + offset, picture_cells))
            units.append(picture_units)
            panels += picture_panels
        empty = torch.zeros(0, dtype=torch.long)
        layouts.append(SampleLayout(tuple(panels), torch.cat([empty, *units]), torch.cat([empty.view(0, 3), *cells])))
    return layouts


def visual_layouts(model: nn.Module, family: str, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells, by the ``plot_layout`` of the family named ``family``
    (``graphprune/families/<name>/layout.py``); None for a name without a family."""
    record = family_named(family)
    return None if record is None else resolve(record.plot_layout)(model, inputs)


KEPT, PRUNED, NO_UNIT = (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.7), (1.0, 1.0, 1.0, 0.85)  # overlay RGBA per cell


def draw(report, path, dpi: int = 100):
    """The PNG at ``path``: a row per sample, a panel per picture, each picture under a grid whose kept cells are
    clear, pruned cells darkened and cells without a unit (e.g. unpadded away) whitened; returns the Figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("graphprune's Report.plot needs matplotlib: pip install 'graphprune[plot]'") from None
    if report.layouts is None:
        names = ", ".join(family.name for family in FAMILIES)
        raise ValueError(f"graphprune has no picture layout for this report's model family; it has one for {names}")
    width = max(1, *(len(layout.panels) for layout in report.layouts))
    fig = Figure(figsize=(2.6 * width, 2.9 * len(report.layouts)), dpi=dpi)
    grid = fig.add_gridspec(len(report.layouts), width)
    for b, (layout, kept) in enumerate(zip(report.layouts, report.kept, strict=True)):
        highlighted = layout.highlighted(kept)
        shown = [panel.pixels.detach().float() for panel in layout.panels if panel.pixels is not None]
        scale = (min(float(t.min()) for t in shown), max(float(t.max()) for t in shown)) if shown else None
        for p in range(width):
            ax = fig.add_subplot(grid[b, p])
            ax.set_axis_off()
            if p < len(layout.panels):
                _draw_panel(ax, layout, p, highlighted, report, b, scale)
            elif p == 0:
                ax.text(0.5, 0.5, f"sample {b}: no visual input", ha="center", va="center")
    fig.savefig(path, dpi=dpi)
    return fig


def _draw_panel(ax, layout: SampleLayout, p: int, highlighted: set, report, b: int, scale) -> None:
    panel = layout.panels[p]
    extent = (0, panel.cols, panel.rows, 0)  # one data unit per cell, row 0 at the top
    if panel.pixels is not None:
        ax.imshow(_displayable(panel.pixels, *scale), extent=extent, interpolation="nearest")
    else:
        ax.imshow(torch.full((1, 1, 3), 0.5).numpy(), extent=extent)
    overlay = torch.tensor(NO_UNIT).repeat(panel.rows, panel.cols, 1)
    own = layout.cells[layout.cells[:, 0] == p]
    overlay[own[:, 1], own[:, 2]] = torch.tensor(PRUNED)
    kept = [(row, col) for q, row, col in highlighted if q == p]
    if kept:
        overlay[tuple(torch.tensor(kept).T)] = torch.tensor(KEPT)
    ax.imshow(overlay.numpy(), extent=extent, interpolation="nearest")
    if panel.tile is not None and report.kept_per_tile is not None:
        share = f"{float(report.kept_per_tile[b][panel.tile]):.0%} of tile"
    else:
        share = f"{len(kept)}/{len(own)}"
    ax.set_title(f"{f'sample {b}: ' if p == 0 else ''}{panel.title}: kept {share}", fontsize=8)


def _displayable(pixels: torch.Tensor, low: float, high: float):
    """``[3, H, W]`` as ``[H, W, 3]`` in [0, 1], ``low`` and ``high`` (the sample's extremes) at its ends (all the
    same: mid-grey)."""
    pixels = pixels.detach().float().cpu()
    scaled = (pixels - low) / (high - low) if high > low else torch.full_like(pixels, 0.5)
    return scaled.permute(1, 2, 0).numpy()
