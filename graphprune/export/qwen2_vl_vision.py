"""Qwen2-VL's and Qwen2.5-VL's vision graph: the vision transformer and merger on one attention segment.

``vision.onnx`` runs one segment, an image or one temporal patch group of a video (the vision blocks
never attend across segments): ``pixel_values [patches, C·T·p·p]`` and ``vision_position_ids
[patches, 2]`` (each patch's row and column, in the processor's merge-block order) give ``[patches /
merge², hidden]``; Qwen2.5-VL's also takes its windows (``window_index``, ``window_ids``). The host
cuts the segments and forms these inputs with ``vision_segments``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class _Vision(nn.Module):
    """Qwen2-VL's vision transformer and merger on one segment, without ``grid_thw``'s data-dependent loops.

    The same blocks as ``model.model.visual``: patch embedding, 2-D rotary embedding from the patch
    coordinates, full attention over the segment, and the 2x2 patch merger.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.visual = model.model.visual

    def forward(self, pixel_values, vision_position_ids):
        return self.visual.merger(self._blocks(self.visual.patch_embed(pixel_values), vision_position_ids, {}))

    def _blocks(self, hidden: torch.Tensor, positions: torch.Tensor, masks: dict[int, torch.Tensor]) -> torch.Tensor:
        """The vision blocks on ``hidden [patches, C]``; block i attends under ``masks[i]`` (additive), if given."""
        rotary = self.rotary(positions)
        for i, block in enumerate(self.visual.blocks):
            hidden = self.block(block, hidden, rotary, masks.get(i))
        return hidden

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The 2-D rotary ``(cos, sin)`` ``[patches, 1, head_dim]`` of the patches' (row, column) ``positions``."""
        freqs = (positions[..., None].float() * self.visual.rotary_pos_emb.inv_freq).flatten(1)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]
        return angles.cos(), angles.sin()

    @staticmethod
    def block(block: nn.Module, hidden: torch.Tensor, rotary: tuple, mask: torch.Tensor | None = None) -> torch.Tensor:
        """One vision block on ``hidden [patches, C]``, attending under ``mask`` (additive) if given."""
        cos, sin = rotary
        attention = block.attn
        query, key, value = attention.qkv(block.norm1(hidden)).unflatten(-1, (3, attention.num_heads, -1)).unbind(1)
        query, key = ((x.float() * cos + _rotate_half(x.float()) * sin).to(x.dtype) for x in (query, key))
        heads = nn.functional.scaled_dot_product_attention(  # [1, heads, patches, head_dim]: ONNX takes 4-D
            *(x.transpose(0, 1)[None] for x in (query, key, value)), attn_mask=mask, scale=attention.scaling
        )
        hidden = hidden + attention.proj(heads[0].transpose(0, 1).flatten(1))
        return hidden + block.mlp(block.norm2(hidden))


class _WindowedVision(_Vision):
    """Qwen2.5-VL's vision transformer on one segment: windowed attention except in its full-attention blocks.

    As HF does, the patches are put in window order (``window_index``: the merge blocks, window by
    window), blocks outside ``fullatt_block_indexes`` attend within their window (``window_ids``:
    each reordered patch's window), and the merged features are put back in merge-block order.
    """

    def forward(self, pixel_values, vision_position_ids, window_index, window_ids):
        visual = self.visual
        unit = visual.spatial_merge_unit

        def windowed(x):
            return x.unflatten(0, (-1, unit))[window_index].flatten(0, 1)

        same = window_ids[:, None] == window_ids[None, :]
        dtype = visual.patch_embed.proj.weight.dtype
        window_mask = torch.zeros_like(same, dtype=dtype).masked_fill(~same, torch.finfo(dtype).min)[None, None]
        masks = {i: window_mask for i in range(len(visual.blocks)) if i not in visual.fullatt_block_indexes}
        hidden = self._blocks(windowed(visual.patch_embed(pixel_values)), windowed(vision_position_ids), masks)
        merged = visual.merger(hidden)
        return torch.zeros_like(merged).index_copy(0, window_index, merged)  # block window_index[j] is row j


def vision_positions(height: int, width: int, merge: int) -> np.ndarray:
    """``[height·width, 2]`` (row, column) of each patch of a segment, in merge-block order (HF's vision positions)."""
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    blocks = (height // merge, merge, width // merge, merge)
    return np.stack([axis.reshape(blocks).transpose(0, 2, 1, 3).ravel() for axis in (rows, columns)], axis=-1)


def vision_windows(height: int, width: int, merge: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL's windows of one segment, as HF's ``get_vision_window_index`` forms them for one frame.

    ``window`` merge blocks per window side. Returns ``window_index [blocks]`` (the merge blocks in
    window order, windows row by row) and ``window_ids [patches]`` (the window of each patch in that order).
    """
    rows, columns = height // merge, width // merge
    padded = np.pad(
        np.arange(rows * columns).reshape(rows, columns),
        ((0, -rows % window), (0, -columns % window)),
        constant_values=-1,
    )
    grid = (padded.shape[0] // window, window, padded.shape[1] // window, window)
    windows = padded.reshape(grid).transpose(0, 2, 1, 3).reshape(-1, window * window)
    ids = np.broadcast_to(np.arange(len(windows))[:, None], windows.shape)
    real = windows >= 0
    return windows[real], np.repeat(ids[real], merge * merge)


def vision_segments(pixel_values, grids: np.ndarray, merge: int, window: int | None = None):
    """The vision graph's inputs for every segment, in order (each image, each video's temporal groups):
    ``pixel_values`` rows and ``vision_position_ids``, and with ``window`` (Qwen2.5-VL) ``window_index``
    and ``window_ids``."""
    start = 0
    for t, h, w in np.asarray(grids).tolist():
        shared = {"vision_position_ids": vision_positions(h, w, merge)}
        if window is not None:
            shared["window_index"], shared["window_ids"] = vision_windows(h, w, merge, window)
        for _ in range(t):
            yield {"pixel_values": pixel_values[start : start + h * w]} | shared
            start += h * w


def is_windowed(model: nn.Module) -> bool:
    """Qwen2.5-VL's vision tower: attention within windows except in its full-attention blocks."""
    return hasattr(model.model.visual, "fullatt_block_indexes")


def vision_graph(model: nn.Module) -> _Vision:
    """The module that ``vision.onnx`` is exported from: one segment in, its merged features out."""
    return (_WindowedVision if is_windowed(model) else _Vision)(model).eval()
