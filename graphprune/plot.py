"""Which visual unit is which cell of which picture (``visual_layouts``, per family, no pixels), and the PNG of
what a report kept (``draw``, matplotlib: the ``plot`` extra).

A unit is what ``Report.kept`` lists: a sequence position (FastV) or a feature row (CrossAttentionTrim). A
family's layout function reads only the model config and the inputs the report saw, and where it can, runs the
model's own packing code on cell coordinates instead of features (LLaVA-NeXT), so the map is the model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


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


def _raster(rows: int, cols: int, panel: int = 0, cls: bool = False) -> torch.Tensor:
    """The ``(panel, row, col)`` of a row-major grid's units, after a CLS unit (no cell) if ``cls``."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    cells = torch.stack([torch.full_like(r, panel), r, c], dim=-1).reshape(-1, 3)
    return torch.cat([torch.full((1, 3), -1), cells]) if cls else cells


def _clip_side(model: nn.Module) -> int:
    vision = model.config.vision_config
    return vision.image_size // vision.patch_size


def _llava_images(model: nn.Module, pixel_values: torch.Tensor | None) -> list[Picture]:
    side, cls = _clip_side(model), model.config.vision_feature_select_strategy == "full"
    return [
        ([Panel(f"image {i}", side, side, pixels)], _raster(side, side, cls=cls))
        for i, pixels in enumerate(pixel_values if pixel_values is not None else [])
    ]


def _llava(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    return {model.config.image_token_id: _llava_images(model, inputs.get("pixel_values"))}


def _video_llava(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    side, config = _clip_side(model), model.config
    images, videos = inputs.get("pixel_values_images"), inputs.get("pixel_values_videos")
    pictures = []
    for v, frames in enumerate(videos if videos is not None else []):  # a frame: its CLS feature, then its patches
        panels = [Panel(f"video {v} frame {f}", side, side, pixels) for f, pixels in enumerate(frames)]
        pictures.append((panels, torch.cat([_raster(side, side, f, cls=True) for f in range(len(frames))])))
    return {
        config.image_token_id: _llava_images(model, images),
        config.video_token_id: pictures,
    }


def _llava_next(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """LLaVA-NeXT's own ``pack_image_features`` run on each crop's cell coordinates (panel 0: the base image,
    panel 1: the crop grid), a newline being ``(-1, -1, -1)``: the order, unpadding and newlines are the model's."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    config, side = model.config, _clip_side(model)
    pixel_values, sizes = inputs.get("pixel_values"), inputs.get("image_sizes")
    if pixel_values is None:
        return {config.image_token_id: []}
    sizes = sizes.cpu()
    coordinates, grids = [], []
    for size in sizes:
        grid_h, grid_w = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
        crops = [
            _raster(side, side, 1) + torch.tensor([0, r * side, c * side]) for r in range(grid_h) for c in range(grid_w)
        ]
        coordinates.append(torch.stack([_raster(side, side), *crops]).float())
        grids.append((grid_h, grid_w))
    packed, _ = model.model.pack_image_features(
        coordinates, sizes, config.vision_feature_select_strategy, image_newline=torch.full((3,), -1.0)
    )
    pictures = []
    for i, (cells, crops, (grid_h, grid_w)) in enumerate(zip(packed, pixel_values, grids, strict=True)):
        panels = [Panel(f"image {i} base", side, side, crops[0])]
        if (cells[:, 0] == 1).any():
            channels, height, width = crops.shape[1:]
            grid = crops[1 : 1 + grid_h * grid_w].reshape(grid_h, grid_w, channels, height, width)
            stitched = grid.permute(2, 0, 3, 1, 4).reshape(channels, grid_h * height, grid_w * width)
            panels.append(Panel(f"image {i} crops {grid_h}x{grid_w}", grid_h * side, grid_w * side, stitched))
        pictures.append((panels, cells.round().long()))
    return {config.image_token_id: pictures}


def _qwen_pictures(
    model: nn.Module, grids: torch.Tensor | None, patches: torch.Tensor | None, kind: str
) -> list[Picture]:
    """One panel per temporal patch of each image or video, its merged grid row-major (as the merger emits
    them); the pixels re-assembled from the patch rows (their first frame)."""
    vision = model.config.vision_config
    merge, patch, channels = vision.spatial_merge_size, vision.patch_size, vision.in_channels
    pictures, start = [], 0
    for i, (t, h, w) in enumerate(grids.tolist() if grids is not None else []):
        rows = patches[start : start + t * h * w].view(
            t, h // merge, w // merge, merge, merge, channels, vision.temporal_patch_size, patch, patch
        )
        start += t * h * w
        frames = rows.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, -1, channels, h * patch, w * patch)[:, 0]
        names = [f"image {i}"] if kind == "image" else [f"video {i} frames {2 * f}-{2 * f + 1}" for f in range(t)]
        panels = [Panel(names[f], h // merge, w // merge, frames[f]) for f in range(t)]
        pictures.append((panels, torch.cat([_raster(h // merge, w // merge, f) for f in range(t)])))
    return pictures


def _qwen2_vl(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    config = model.config
    return {
        config.image_token_id: _qwen_pictures(model, inputs.get("image_grid_thw"), inputs.get("pixel_values"), "image"),
        config.video_token_id: _qwen_pictures(
            model, inputs.get("video_grid_thw"), inputs.get("pixel_values_videos"), "video"
        ),
    }


_TOKEN_FAMILIES: dict[str, Callable[[nn.Module, dict], dict[int, list[Picture]]]] = {
    "llava": _llava,
    "llava-next": _llava_next,
    "video-llava": _video_llava,
    "qwen2-vl": _qwen2_vl,
}


def _token_layouts(model: nn.Module, pictures: dict[int, list[Picture]], input_ids: torch.Tensor) -> list[SampleLayout]:
    """Each sample's visual tokens matched, in order, with the pictures of their token id (in batch order,
    as the model consumes them)."""
    queues = {token: iter(items) for token, items in pictures.items()}
    layouts = []
    for row in input_ids.cpu():
        panels, units, cells = [], [], []
        position = 0
        while position < len(row):
            token = int(row[position])
            if token not in queues:
                position += 1
                continue
            picture_panels, picture_cells = next(queues[token])
            offset = torch.tensor([len(panels), 0, 0])
            cells.append(torch.where(picture_cells[:, :1] >= 0, picture_cells + offset, picture_cells))
            units.append(torch.arange(position, position + len(picture_cells)))
            panels += picture_panels
            position += len(picture_cells)
        empty = torch.zeros(0, dtype=torch.long)
        layouts.append(SampleLayout(tuple(panels), torch.cat([empty, *units]), torch.cat([empty.view(0, 3), *cells])))
    return layouts


def _mllama(model: nn.Module, inputs: dict) -> list[SampleLayout]:
    """Features are rows of ``images x tiles x (1 + side²)`` (a CLS feature first in each tile); a panel per real
    tile (``aspect_ratio_mask``), the padding tiles' features without a cell."""
    vision = model.config.vision_config
    side, tiles, per_tile = (
        vision.image_size // vision.patch_size,
        vision.max_num_tiles,
        model.model.vision_model.num_patches,
    )
    pixel_values, real = inputs.get("pixel_values"), inputs.get("aspect_ratio_mask")
    real = real.cpu() if real is not None else None
    layouts = []
    batch = next(inputs[name] for name in ("input_ids", "inputs_embeds") if inputs.get(name) is not None).shape[0]
    for b in range(batch):
        panels, cells = [], []
        for image in range(0 if pixel_values is None else pixel_values.shape[1]):
            for tile in range(tiles):
                if real[b, image, tile]:
                    cells.append(_raster(side, side, len(panels), cls=True))
                    panels.append(
                        Panel(f"image {image} tile {tile}", side, side, pixel_values[b, image, tile], (image, tile))
                    )
                else:
                    cells.append(torch.full((per_tile, 3), -1))
        cells = torch.cat(cells) if cells else torch.zeros(0, 3, dtype=torch.long)
        layouts.append(SampleLayout(tuple(panels), torch.arange(len(cells)), cells))
    return layouts


def visual_layouts(model: nn.Module, family: str, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells; None for a family without a layout here."""
    if family == "mllama":
        return _mllama(model, inputs)
    layout = _TOKEN_FAMILIES.get(family)
    if layout is None or inputs.get("input_ids") is None:
        return None
    return _token_layouts(model, layout(model, inputs), inputs["input_ids"])


KEPT, PRUNED, NO_UNIT = (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.7), (1.0, 1.0, 1.0, 0.85)  # overlay RGBA per cell


def draw(report, path, dpi: int = 100):
    """The PNG at ``path``: a row per sample, a panel per picture, each picture under a grid whose kept cells are
    clear, pruned cells darkened and cells without a unit (e.g. unpadded away) whitened; returns the Figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("graphprune's Report.plot needs matplotlib: pip install 'graphprune[plot]'") from None
    if report.layouts is None:
        raise ValueError(f"graphprune has no picture layout for this report's model family; it has one for {FAMILIES}")
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


FAMILIES = ", ".join(["mllama", *_TOKEN_FAMILIES])
