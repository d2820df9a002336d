"""LLaVA-OneVision's picture layout: base image, unpadded crop grid, pooled video frames."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...plot import Panel, Picture, SampleLayout, clip_side, or_empty, raster, stitched, token_layouts


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

    config, side = model.config, clip_side(model)
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
            [raster(side, side)]
            + [raster(side, side, 1) + torch.tensor([0, r * side, c * side]) for r in range(h) for c in range(w)]
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
            crops_panel = _onevision_crops(model, stitched(crops, h, w), size)
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


def _onevision_videos(model: nn.Module, videos: torch.Tensor | None) -> list[Picture]:
    """A panel per frame, its patches pooled 2x2 (the model's bilinear ``apply_pooling`` to ``ceil(side / 2)``
    a side), then the video's newline (no cell)."""
    pooled = math.ceil(clip_side(model) / 2)
    return [
        (
            [Panel(f"video {v} frame {f}", pooled, pooled, pixels) for f, pixels in enumerate(frames)],
            torch.cat([*(raster(pooled, pooled, f) for f in range(len(frames))), torch.full((1, 3), -1)]),
        )
        for v, frames in enumerate(or_empty(videos))
    ]


def layouts(model: nn.Module, inputs: dict) -> list[SampleLayout] | None:
    """Per sample of ``inputs``, its visual units' cells (``plot.visual_layouts``)."""
    return token_layouts(_llava_onevision(model, inputs), inputs)
