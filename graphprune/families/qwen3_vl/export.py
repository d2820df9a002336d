"""The Qwen3-VL export family (FastV, arXiv 2403.06764): Qwen2-VL's graphs and host inputs, plus DeepStack.

``vision.onnx`` runs one segment (an image, or one frame of a video) and gives ``[tokens, 1 + D, hidden]``:
each token's merged feature, then its D DeepStack features. The learned position grid is resampled to
the segment's grid on the host (``position_table``: gather indices and bilinear weights per patch), so
every grid runs on one file. ``embed.onnx`` places the merged features in ``inputs_embeds`` and the
DeepStack features in the prefill graph's ``deepstack_i`` inputs (zeros at other positions). M-RoPE
positions are Qwen2-VL's (``mrope``) with a video's frames as separate grids, as Qwen3-VL's
``get_rope_index`` splits them (the processor puts a timestamp before each frame).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...capture import deepstack_names
from ...export.decoder_graphs import FeatureEmbedding
from ...export.family import DECODER_KEYS
from ...export.fastv_family import DEMO_LAYERS
from ...export.mrope import prompt_positions
from ...export.qwen2_vl_vision import _Vision, vision_positions
from ...models import UnsupportedModelError, adapter_for
from ...runtime import optimize
from ..qwen2_vl.export import VISION_AXES, VISUAL_INPUTS, Qwen2VLExport

TAPS = 4  # bilinear: 2 x 2 grid entries per patch
MOE_REFUSAL = (
    "its experts run transformers' grouped_mm_fallback op, which torch.onnx cannot convert; "
    "Qwen3VLForConditionalGeneration (dense) exports"
)


class _DeepStackVision(_Vision):
    """Qwen3-VL's vision tower on one segment: patch embedding plus the resampled position grid, the blocks
    (2-D rotary, full attention), the merger and, after the DeepStack blocks, their mergers."""

    def forward(self, pixel_values, vision_position_ids, interp_indices, interp_weights):
        visual = self.visual
        hidden = visual.patch_embed(pixel_values)
        hidden = hidden + (visual.pos_embed(interp_indices) * interp_weights[:, :, None]).sum(1).to(hidden.dtype)
        rotary, deepstack = self.rotary(vision_position_ids), []
        for i, block in enumerate(visual.blocks):
            hidden = self.block(block, hidden, rotary)
            if i in visual.deepstack_visual_indexes:
                deepstack.append(visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(i)](hidden))
        return torch.stack([visual.merger(hidden), *deepstack], dim=1)


def position_table(positions: np.ndarray, height: int, width: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """HF's resampling of the ``side x side`` learned position grid to a ``height x width`` patch grid (bilinear,
    corners aligned) for the patches at ``positions [patches, 2]`` (row, column): ``[patches, 4]`` indices into
    the grid and their float32 weights."""
    taps, weights = [], []
    for index, size in ((positions[:, 0], height), (positions[:, 1], width)):
        source = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
        floor, offsets = np.floor(source), np.arange(2, dtype=np.float32)
        taps.append(np.clip(floor.astype(np.int64)[:, None] + np.arange(2), 0, side - 1))
        weights.append(np.clip(1 - np.abs(source[:, None] - floor[:, None] - offsets), 0, None))
    indices = (taps[0][:, :, None] * side + taps[1][:, None, :]).reshape(-1, TAPS)
    return indices, (weights[0][:, :, None] * weights[1][:, None, :]).reshape(-1, TAPS)


class Qwen3VLExport(Qwen2VLExport):
    """Qwen3-VL (FastV): ``vision`` (one segment a run, DeepStack features too), ``embed``, ``prefill``, ``decode``;
    the budget is ``max_visual_tokens`` per sample."""

    name, title, demo_names = "qwen3-vl", "Qwen3-VL", ("qwen3-vl",)
    model_keys = (*DECODER_KEYS, "image_token_id", "video_token_id", "spatial_merge_size", "position_grid")
    visual_inputs = tuple(name for name in VISUAL_INPUTS if name != "second_per_grid_ts")
    vision_axes = VISION_AXES | {"interp_indices": "patches", "interp_weights": "patches"}

    @classmethod
    def export_graphs(cls, model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
        """Qwen2-VL's graphs with DeepStack; Qwen3-VL-MoE is refused (``MOE_REFUSAL``)."""
        if getattr(model.config.text_config, "num_experts", 0):
            raise UnsupportedModelError(f"graphprune cannot export {type(model).__name__}: {MOE_REFUSAL}")
        return super().export_graphs(model, state, example_inputs, max_visual_tokens, prune)

    @staticmethod
    def layout(model: nn.Module) -> dict:
        """The merge size and ``position_grid``, the side of the learned position grid (which must be resampled
        as HF does today: bilinearly, corners aligned)."""
        visual = model.model.visual
        if (visual.interpolation_mode, visual.interpolation_align_corners) != ("bilinear", True):
            used = f"{visual.interpolation_mode!r}, align_corners={visual.interpolation_align_corners}"
            raise ValueError(
                "graphprune exports Qwen3-VL vision towers that resample their position grid bilinearly with "
                f"aligned corners (align_corners=True); this one uses {used}: run it in PyTorch (graphprune.optimize)"
            )
        return {"spatial_merge_size": visual.spatial_merge_size, "position_grid": visual.num_grid_per_side}

    @staticmethod
    def vision(model: nn.Module) -> nn.Module:
        return _DeepStackVision(model).eval()

    @staticmethod
    def embedding(model: nn.Module, visual_ids: tuple[int, ...]) -> FeatureEmbedding:
        return FeatureEmbedding(model, visual_ids, deepstack_names(adapter_for(model).layout(model)))

    @staticmethod
    def segments(pixel_rows, grids: np.ndarray, layout: dict):
        """Per image or video frame: its patch rows, their (row, column) and position-grid table."""
        start, merge, side = 0, layout["spatial_merge_size"], layout["position_grid"]
        for t, h, w in np.asarray(grids).tolist():
            positions = vision_positions(h, w, merge)
            indices, weights = position_table(positions, h, w, side)
            for _ in range(t):
                shared = {"vision_position_ids": positions, "interp_indices": indices, "interp_weights": weights}
                yield {"pixel_values": pixel_rows[start : start + h * w]} | shared
                start += h * w

    @staticmethod
    def positions(layout: dict, types, mask, image_grids, video_grids, seconds) -> np.ndarray:
        """Qwen2-VL's positions with each video frame a grid of its own (``seconds``: Qwen3-VL has none)."""
        if video_grids is not None:
            video_grids = np.repeat(video_grids, video_grids[:, 0], axis=0)
            video_grids[:, 0] = 1
        return prompt_positions(layout, types, mask, image_grids, video_grids, None)

    @classmethod
    def demo(cls, method, name: str):
        from .testing import qwen3_vl_inputs, tiny_qwen3_vl

        model = optimize(tiny_qwen3_vl(num_layers=DEMO_LAYERS), method)
        return model, qwen3_vl_inputs(model, [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(2, 4, 4)], 3)])
