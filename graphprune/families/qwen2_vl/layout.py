"""The Qwen-VL picture layout (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): a panel per temporal patch, merged grid."""

from __future__ import annotations

import torch
from torch import nn

from ...plot import Panel, Picture, SampleLayout, raster, token_layouts


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
        pictures.append((panels, torch.cat([raster(h // merge, w // merge, f) for f in range(t)])))
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


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_qwen_vl(model, inputs), inputs)
