"""LLaVA's picture layout: a panel per image, its CLIP patch grid (after a CLS feature, no cell: the full strategy)."""

from __future__ import annotations

import torch
from torch import nn

from ...plot import Panel, Picture, SampleLayout, clip_side, raster, token_layouts


def llava_images(model: nn.Module, pixel_values: torch.Tensor | None) -> list[Picture]:
    side, cls = clip_side(model), model.config.vision_feature_select_strategy == "full"
    return [
        ([Panel(f"image {i}", side, side, pixels)], raster(side, side, cls=cls))
        for i, pixels in enumerate(pixel_values if pixel_values is not None else [])
    ]


def _llava(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    return {model.config.image_token_id: llava_images(model, inputs.get("pixel_values"))}


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_llava(model, inputs), inputs)
