"""Which visual unit is which cell of which picture (``visual_layouts``, per family, no pixels), and the PNG of
what a report kept (``draw``, matplotlib: the ``plot`` extra).

A unit is what ``Report.kept`` lists: a sequence position (FastV) or a feature row (CrossAttentionTrim). A
family's layout function reads only the model config and the inputs the report saw, and where it can, runs the
model's own packing code on cell coordinates instead of features (LLaVA-NeXT's and LLaVA-OneVision's packing,
InternVL's and Idefics3's pixel shuffle), so the map is the model's. A token a pixel shuffle, pooling or
downscaling merged from several patches has the cell of their region in a grid of such tokens.
"""

from __future__ import annotations

import math
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
            stitched = _stitched(crops, grid_h, grid_w)
            panels.append(Panel(f"image {i} crops {grid_h}x{grid_w}", grid_h * side, grid_w * side, stitched))
        pictures.append((panels, cells.round().long()))
    return {config.image_token_id: pictures}


def _llava_onevision(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    config = model.config
    return {
        config.image_token_id: _onevision_images(model, inputs),
        config.video_token_id: _onevision_videos(model, inputs.get("pixel_values_videos")),
    }


def _onevision_images(model: nn.Module, inputs: dict) -> list[Picture]:
    """LLaVA-OneVision's own ``pack_image_features`` run on each crop's patch coordinates: panel 0 the base
    image; an image alone in its prompt also panel 1, the unpadded part of its crop grid under the grid the
    model packs it to (unpadded, then downscaled by ``vision_aspect_ratio``'s ``anyres_max``), a row per newline."""
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

    config, side = model.config, _clip_side(model)
    pixel_values, sizes, counts = (inputs.get(name) for name in ("pixel_values", "image_sizes", "batch_num_images"))
    if pixel_values is None:
        return []
    sizes = sizes.cpu()
    alone = [True] * len(sizes) if counts is None else [n == 1 for n in counts.tolist() for _ in range(n)]
    grids = [
        get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
        if anyres
        else (0, 0)
        for size, anyres in zip(sizes, alone, strict=True)
    ]
    coordinates = [
        torch.stack(
            [_raster(side, side)]
            + [_raster(side, side, 1) + torch.tensor([0, r * side, c * side]) for r in range(h) for c in range(w)]
        ).float()
        for h, w in grids
    ]
    ratio = inputs.get("vision_aspect_ratio") or config.vision_aspect_ratio
    packed, _ = model.model.pack_image_features(coordinates, sizes, torch.full((3,), -1.0), ratio)
    pictures = []
    for i, (cells, crops, (h, w), size) in enumerate(zip(packed, pixel_values, grids, sizes, strict=True)):
        panels = [Panel(f"image {i} base" if h else f"image {i}", side, side, crops[0])]
        crops_cells = torch.full((len(cells) - side * side, 3), -1)  # no crops: the newline alone
        if h:
            crops_panel = _onevision_crops(model, _stitched(crops, h, w), size)
            newline = cells[side * side :, 0] < 0
            rows, cols = int(newline.sum()), len(newline) // int(newline.sum()) - 1
            k = torch.arange(len(newline))[~newline]  # a row of cols tokens, then its newline
            crops_cells[~newline] = torch.stack([torch.ones_like(k), k // (cols + 1), k % (cols + 1)], dim=1)
            panels.append(Panel(f"image {i} crops {h}x{w}", rows, cols, crops_panel))
        pictures.append((panels, torch.cat([cells[: side * side].round().long(), crops_cells])))
    return pictures


def _onevision_crops(model: nn.Module, stitched: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """The part of the stitched crop grid's pixels that the model's ``unpad_image`` keeps (run on patch
    coordinates)."""
    from transformers.models.llava_onevision.modeling_llava_onevision import unpad_image

    patch = model.config.vision_config.patch_size
    rows, cols = (torch.arange(length // patch) for length in stitched.shape[1:])
    kept = unpad_image(torch.stack(torch.meshgrid(rows, cols, indexing="ij")), size)
    top, left, height, width = int(kept[0].min()), int(kept[1].min()), *kept.shape[1:]
    return stitched[:, top * patch : (top + height) * patch, left * patch : (left + width) * patch]


def _stitched(crops: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``crops[1 : 1 + h·w]`` (after the base image), an ``h x w`` grid row-major, as one ``[C, H, W]`` picture."""
    channels, height, width = crops.shape[1:]
    grid = crops[1 : 1 + h * w].reshape(h, w, channels, height, width)
    return grid.permute(2, 0, 3, 1, 4).reshape(channels, h * height, w * width)


def _onevision_videos(model: nn.Module, videos: torch.Tensor | None) -> list[Picture]:
    """A panel per frame, its patches pooled 2x2 (the model's bilinear ``apply_pooling`` to ``ceil(side / 2)``
    a side), then the video's newline (no cell)."""
    pooled = math.ceil(_clip_side(model) / 2)
    return [
        (
            [Panel(f"video {v} frame {f}", pooled, pooled, pixels) for f, pixels in enumerate(frames)],
            torch.cat([*(_raster(pooled, pooled, f) for f in range(len(frames))), torch.full((1, 3), -1)]),
        )
        for v, frames in enumerate(_or_empty(videos))
    ]


def _or_empty(tensor: torch.Tensor | None):
    return tensor if tensor is not None else []


def _qwen_pictures(
    model: nn.Module, grids: torch.Tensor | None, patches: torch.Tensor | None, kind: str
) -> list[Picture]:
    """One panel per temporal patch of each image or video, its merged grid row-major (as the merger emits
    them); the pixels re-assembled from the patch rows (their first frame)."""
    vision = model.config.vision_config
    merge, patch, channels = vision.spatial_merge_size, vision.patch_size, vision.in_channels
    temporal = vision.temporal_patch_size
    pictures, start = [], 0
    for i, (t, h, w) in enumerate(grids.tolist() if grids is not None else []):
        rows = patches[start : start + t * h * w].view(
            t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch
        )
        start += t * h * w
        frames = rows.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t, -1, channels, h * patch, w * patch)[:, 0]
        names = (
            [f"image {i}"]
            if kind == "image"
            else [f"video {i} frames {temporal * f}-{temporal * f + temporal - 1}" for f in range(t)]
        )
        panels = [Panel(names[f], h // merge, w // merge, frames[f]) for f in range(t)]
        pictures.append((panels, torch.cat([_raster(h // merge, w // merge, f) for f in range(t)])))
    return pictures


def _qwen_vl(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL (its video's temporal patches apart, each after its timestamp)."""
    config = model.config
    return {
        config.image_token_id: _qwen_pictures(model, inputs.get("image_grid_thw"), inputs.get("pixel_values"), "image"),
        config.video_token_id: _qwen_pictures(
            model, inputs.get("video_grid_thw"), inputs.get("pixel_values_videos"), "video"
        ),
    }


def _shuffled_cells(shuffle: Callable[[torch.Tensor], torch.Tensor], side: int) -> tuple[int, torch.Tensor]:
    """The model's own pixel shuffle (``shuffle``: a tile's ``[side, side, C]`` patch features to its
    ``[tokens, C·k]`` tokens) run on each patch's ``(row, col)``: the side of the token grid, and per token its
    ``(row, col)`` there, the block of the ``k`` patches it merges."""
    r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    sources = shuffle(torch.stack([r, c], dim=-1).float())
    sources = sources.reshape(len(sources), -1, 2).long()  # per token, its patches' (row, col)
    grid = math.isqrt(len(sources))
    return grid, sources.amin(dim=1) // (side // grid)


def _internvl(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """A panel per tile (the last of several: the processor's thumbnail), its pixel-shuffled grid; an image is
    a run of ``image_token_id`` positions (its tiles back to back), ``pixel_values`` all tiles in batch order."""
    config, vision = model.config, model.config.vision_config
    grid, cells = _shuffled_cells(
        lambda x: model.model.pixel_shuffle(x[None], config.downsample_ratio).flatten(0, 2),
        vision.image_size[0] // vision.patch_size[0],
    )
    tiles, pictures = iter(_or_empty(inputs.get("pixel_values"))), []
    for row in inputs["input_ids"].cpu():
        is_image, lengths = torch.unique_consecutive(row == config.image_token_id, return_counts=True)
        for length in lengths[is_image].tolist():
            count, i = length // len(cells), len(pictures)
            panels = [Panel(f"image {i} tile {t}", grid, grid, next(tiles)) for t in range(count)]
            pictures.append((panels, torch.cat([_tile_cells(cells, t) for t in range(count)])))
    return {config.image_token_id: pictures}


def _idefics3(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """Idefics3, SmolVLM: a panel per real tile of a sample (``pixel_values[b]``, all-zero ones are padding; an
    image's tiles then its global image), its pixel-shuffled grid."""
    vision = model.config.vision_config
    grid, cells = _shuffled_cells(
        lambda x: model.model.connector.pixel_shuffle(x.flatten(0, 1)[None], model.config.scale_factor)[0],
        vision.image_size // vision.patch_size,
    )
    real = [[tile for tile in sample if tile.any()] for sample in _or_empty(inputs.get("pixel_values"))]
    return {
        model.config.image_token_id: [
            ([Panel(f"tile {t}", grid, grid, tile)], _tile_cells(cells, 0))
            for tiles in real
            for t, tile in enumerate(tiles)
        ]
    }


def _gemma3(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """A panel per ``pixel_values`` entry (an image, or a pan-and-scan crop: its own image tokens), the grid the
    projector's own ``avg_pool`` makes of the SigLIP patches (run on their coordinates): ``mm_tokens_per_image``
    tokens, a square, row-major."""
    projector = model.model.multi_modal_projector
    side = torch.arange(projector.patches_per_image, dtype=torch.float)
    pooled = projector.avg_pool(torch.stack(torch.meshgrid(side, side, indexing="ij"))[None])[0]  # mean (row, col)
    grid, cells = pooled.shape[-1], (pooled.flatten(1).T // projector.kernel_size).long()
    return {
        model.config.image_token_id: [
            ([Panel(f"image {i}", grid, grid, pixels)], _tile_cells(cells, 0))
            for i, pixels in enumerate(_or_empty(inputs.get("pixel_values")))
        ]
    }


def _tile_cells(cells: torch.Tensor, panel: int) -> torch.Tensor:
    return torch.cat([torch.full((len(cells), 1), panel), cells], dim=1)


_TOKEN_FAMILIES: dict[str, Callable[[nn.Module, dict], dict[int, list[Picture]]]] = {
    "llava": _llava,
    "llava-next": _llava_next,
    "llava-onevision": _llava_onevision,
    "video-llava": _video_llava,
    "qwen2-vl": _qwen_vl,
    "qwen3-vl": _qwen_vl,
    "internvl": _internvl,
    "idefics3": _idefics3,
    "gemma3": _gemma3,
}


def _token_layouts(pictures: dict[int, list[Picture]], input_ids: torch.Tensor) -> list[SampleLayout]:
    """Each sample's visual tokens matched with the pictures of their token id: a picture's units are the next
    positions holding its id (in batch order, as the model scatters its features), its panels placed in the
    order of their first position."""
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
    return _token_layouts(layout(model, inputs), inputs["input_ids"])


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
