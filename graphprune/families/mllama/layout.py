"""Mllama's picture layout: a panel per real tile; units are feature rows, not sequence positions."""

from __future__ import annotations

import torch
from torch import nn

from ...plot import Panel, SampleLayout, raster


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout]:
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
                    cells.append(raster(side, side, len(panels), cls=True))
                    panels.append(
                        Panel(f"image {image} tile {tile}", side, side, pixel_values[b, image, tile], (image, tile))
                    )
                else:
                    cells.append(torch.full((per_tile, 3), -1))
        cells = torch.cat(cells) if cells else torch.zeros(0, 3, dtype=torch.long)
        layouts.append(SampleLayout(tuple(panels), torch.arange(len(cells)), cells))
    return layouts
