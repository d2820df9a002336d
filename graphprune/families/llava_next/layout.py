"""LLaVA-NeXT's picture layout: the base image and the crop grid, packed by the model's own code."""

from __future__ import annotations

import torch
from torch import nn

from ...plot import Panel, Picture, SampleLayout, clip_side, raster, stitched, token_layouts


def _llava_next(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """LLaVA-NeXT's own ``pack_image_features`` run on each crop's cell coordinates (panel 0: the base image,
    panel 1: the crop grid), a newline being ``(-1, -1, -1)``: the order, unpadding and newlines are the model's."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    config, side = model.config, clip_side(model)
    pixel_values, sizes = inputs.get("pixel_values"), inputs.get("image_sizes")
    if pixel_values is None:
        return {config.image_token_id: []}
    sizes = sizes.cpu()
    coordinates, grids = [], []
    for size in sizes:
        grid_h, grid_w = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, config.vision_config.image_size)
        crops = [
            raster(side, side, 1) + torch.tensor([0, r * side, c * side]) for r in range(grid_h) for c in range(grid_w)
        ]
        coordinates.append(torch.stack([raster(side, side), *crops]).float())
        grids.append((grid_h, grid_w))
    packed, _ = model.model.pack_image_features(
        coordinates, sizes, config.vision_feature_select_strategy, image_newline=torch.full((3,), -1.0)
    )
    pictures = []
    for i, (cells, crops, (grid_h, grid_w)) in enumerate(zip(packed, pixel_values, grids, strict=True)):
        panels = [Panel(f"image {i} base", side, side, crops[0])]
        if (cells[:, 0] == 1).any():
            panels.append(
                Panel(
                    f"image {i} crops {grid_h}x{grid_w}", grid_h * side, grid_w * side, stitched(crops, grid_h, grid_w)
                )
            )
        pictures.append((panels, cells.round().long()))
    return {config.image_token_id: pictures}


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_llava_next(model, inputs), inputs)
