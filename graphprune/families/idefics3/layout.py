"""Idefics3's and SmolVLM's picture layout: a panel per real tile, its pixel-shuffled grid."""

from __future__ import annotations

from torch import nn

from ...plot import Panel, Picture, SampleLayout, or_empty, shuffled_cells, tile_cells, token_layouts


def _idefics3(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    """Idefics3, SmolVLM: a panel per real tile of a sample (``pixel_values[b]``, all-zero ones are padding; an
    image's tiles then its global image), its pixel-shuffled grid."""
    vision = model.config.vision_config
    grid, cells = shuffled_cells(
        lambda x: model.model.connector.pixel_shuffle(x.flatten(0, 1)[None], model.config.scale_factor)[0],
        vision.image_size // vision.patch_size,
    )
    real = [[tile for tile in sample if tile.any()] for sample in or_empty(inputs.get("pixel_values"))]
    return {
        model.config.image_token_id: [
            ([Panel(f"tile {t}", grid, grid, tile)], tile_cells(cells, 0))
            for tiles in real
            for t, tile in enumerate(tiles)
        ]
    }


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_idefics3(model, inputs), inputs)
