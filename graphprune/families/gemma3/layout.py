"""Gemma 3's picture layout: a panel per image or crop, the projector's pooled grid."""

from __future__ import annotations

import torch
from torch import nn

from ...plot import Panel, Picture, SampleLayout, or_empty, tile_cells, token_layouts


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
            ([Panel(f"image {i}", grid, grid, pixels)], tile_cells(cells, 0))
            for i, pixels in enumerate(or_empty(inputs.get("pixel_values")))
        ]
    }


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_gemma3(model, inputs), inputs)
