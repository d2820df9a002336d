"""InternVL's picture layout: a panel per tile, its pixel-shuffled grid."""

from __future__ import annotations

import torch
from torch import nn

from ...plot import Panel, Picture, SampleLayout, or_empty, shuffled_cells, tile_cells, token_layouts


def _internvl(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """A panel per tile (the last of several: the processor's thumbnail), its pixel-shuffled grid; an image is
    a run of ``image_token_id`` positions (its tiles back to back), ``pixel_values`` all tiles in batch order."""
    config, vision = model.config, model.config.vision_config
    grid, cells = shuffled_cells(
        lambda x: model.model.pixel_shuffle(x[None], config.downsample_ratio).flatten(0, 2),
        vision.image_size[0] // vision.patch_size[0],
    )
    tiles, pictures = iter(or_empty(inputs.get("pixel_values"))), []
    for row in inputs["input_ids"].cpu():
        is_image, lengths = torch.unique_consecutive(row == config.image_token_id, return_counts=True)
        for length in lengths[is_image].tolist():
            count, i = length // len(cells), len(pictures)
            panels = [Panel(f"image {i} tile {t}", grid, grid, next(tiles)) for t in range(count)]
            pictures.append((panels, torch.cat([tile_cells(cells, t) for t in range(count)])))
    return {config.image_token_id: pictures}


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_internvl(model, inputs), inputs)
