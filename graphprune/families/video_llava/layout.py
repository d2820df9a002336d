"""Video-LLaVA's picture layout: LLaVA's for images, a panel per video frame."""

from __future__ import annotations

import torch
from torch import nn

from ...plot import Panel, Picture, SampleLayout, clip_side, raster, token_layouts
from ..llava.layout import llava_images


def _video_llava(model: nn.Module, inputs: dict) -> dict[int, list[Picture]]:
    side, config = clip_side(model), model.config
    images, videos = inputs.get("pixel_values_images"), inputs.get("pixel_values_videos")
    pictures = []
    for v, frames in enumerate(videos if videos is not None else []):  # a frame: its CLS feature, then its patches
        panels = [Panel(f"video {v} frame {f}", side, side, pixels) for f, pixels in enumerate(frames)]
        pictures.append((panels, torch.cat([raster(side, side, f, cls=True) for f in range(len(frames))])))
    return {
        config.image_token_id: llava_images(model, images),
        config.video_token_id: pictures,
    }


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_video_llava(model, inputs), inputs)
