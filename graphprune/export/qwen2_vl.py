"""The files of a Qwen2-VL or Qwen2.5-VL export (FastV, arXiv 2403.06764): vision encoder + merger, embedding,
decoder graphs.

``vision.onnx`` runs one attention segment, an image or one temporal patch group of a video (the
vision blocks never attend across segments): ``pixel_values [patches, C·T·p·p]`` and
``vision_position_ids [patches, 2]`` (each patch's row and column, in the processor's merge-block
order) give ``[patches / merge², hidden]``; Qwen2.5-VL's also takes its windows (``window_index``,
``window_ids``). ``embed.onnx`` places image features at image tokens and video features at video
tokens. The decoder graphs (``decoder_graphs``) take M-RoPE position ids ``[3, B, N]``, which the
host computes as HF's ``get_rope_index`` does (``mrope_positions``); a new token continues each row
from the last prompt position, as HF ``generate`` does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from .decoder_graphs import NEW_TOKENS, FeatureEmbedding, decoder_graphs, embed_graph, model_details, token_budget
from .graph_export import GraphExport

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids, as Qwen2-VL's processor writes them
KIND_NAMES = {IMAGE: "image", VIDEO: "video"}


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
        visual = self.visual
        freqs = (positions[..., None].float() * visual.rotary_pos_emb.inv_freq).flatten(1)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [patches, 1, head_dim]
        cos, sin = angles.cos(), angles.sin()
        for i, block in enumerate(visual.blocks):
            attention = block.attn
            query, key, value = attention.qkv(block.norm1(hidden)).unflatten(-1, (3, attention.num_heads, -1)).unbind(1)
            query, key = ((x.float() * cos + _rotate_half(x.float()) * sin).to(x.dtype) for x in (query, key))
            heads = nn.functional.scaled_dot_product_attention(  # [1, heads, patches, head_dim]: ONNX takes 4-D
                *(x.transpose(0, 1)[None] for x in (query, key, value)), attn_mask=masks.get(i), scale=attention.scaling
            )
            hidden = hidden + attention.proj(heads[0].transpose(0, 1).flatten(1))
            hidden = hidden + block.mlp(block.norm2(hidden))
        return hidden


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


def mrope_positions(
    token_types: np.ndarray, attention_mask: np.ndarray, image_grids, video_grids, merge: int, video_intervals=()
) -> np.ndarray:
    """M-RoPE position ids ``[3, B, N]`` as HF's ``get_rope_index`` (transformers 5) forms them.

    Text counts on in all three rows; an image or video spans its ``(t, h / merge, w / merge)``
    grid from the current position, and the text after it starts ``max(h, w) / merge`` later (the
    time axis does not count there: transformers 5.17-5.23 do so, where Qwen's original code and
    transformers 4 start after the largest position).
    Qwen2.5-VL spaces a video's temporal positions by ``video_intervals[i]`` (time ``t`` at ``int(t x
    interval)``, as HF truncates it); missing intervals are 1 (Qwen2-VL).
    Padding positions get 0. ``token_types``: 0 text, 1 image, 2 video (``mm_token_type_ids``).
    """
    positions = np.zeros((3, *token_types.shape), dtype=np.int64)
    grids = {IMAGE: iter(np.asarray(image_grids).tolist()), VIDEO: iter(np.asarray(video_grids).tolist())}
    intervals = {IMAGE: itertools.repeat(1), VIDEO: itertools.chain(video_intervals, itertools.repeat(1))}
    for b in range(token_types.shape[0]):
        real = attention_mask[b].astype(bool)
        pieces, current = [], 0
        for kind, group in itertools.groupby(token_types[b][real].tolist()):
            count = len(list(group))
            if kind == TEXT:
                pieces.append(np.broadcast_to(np.arange(count) + current, (3, count)))
                current += count
                continue
            name = KIND_NAMES[kind]
            while count > 0:  # consecutive spans of one kind: one grid each
                grid = next(grids[kind], None)
                if grid is None:
                    raise ValueError(f"sample {b} has more {name} tokens than {name}_grid_thw describes")
                t, h, w = grid
                times = (np.arange(t, dtype=np.float32) * np.float32(next(intervals[kind]))).astype(np.int64)
                axes = np.meshgrid(times, np.arange(h // merge), np.arange(w // merge), indexing="ij")
                pieces.append(np.stack(axes).reshape(3, -1) + current)
                current += max(h, w) // merge
                count -= t * (h // merge) * (w // merge)
                if count < 0:
                    raise ValueError(f"sample {b}: fewer {name} tokens than its {name}_grid_thw row {grid} needs")
        positions[:, b, real] = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
    return positions


def token_types(input_ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
    """``mm_token_type_ids`` from the placeholder ids, for callers that do not pass the processor's."""
    return np.where(input_ids == image_token_id, IMAGE, np.where(input_ids == video_token_id, VIDEO, TEXT))


VIDEO_SECONDS = ("exact", "whole")  # how get_rope_index scales a video's time: transformers 5.23, 5.17


def video_intervals(tokens_per_second: int | None, second_per_grid_ts, videos: int, rule: str | None) -> list:
    """Qwen2.5-VL's temporal position step per video (``second_per_grid_ts`` absent: 1 s); none for Qwen2-VL
    (``tokens_per_second`` None). ``rule`` (``vision_layout``'s ``video_seconds``) is the installed
    transformers' rule: ``"exact"`` (or None) ``tokens_per_second x second_per_grid_ts[i]`` in float32,
    ``"whole"`` ``tokens_per_second x int(second_per_grid_ts[i])``."""
    if tokens_per_second is None:
        return []
    given = np.ones(videos, np.float32) if second_per_grid_ts is None else np.asarray(second_per_grid_ts, np.float32)
    return list(np.float32(tokens_per_second) * (np.trunc(given) if rule == "whole" else given))


def _video_seconds(model: nn.Module, merge: int, tokens_per_second: int) -> str:
    """The ``VIDEO_SECONDS`` rule of the model's own ``get_rope_index``, found by running it on a probe video
    (3 temporal groups, 1.6 s each) where the rules differ; a ``ValueError`` when none reproduces it."""
    grids, seconds, tokens = np.array([[3, merge, merge]]), np.array([1.6], np.float32), 3
    input_ids = torch.full((1, tokens), model.config.video_token_id)
    expected, _ = model.model.get_rope_index(
        input_ids,
        torch.full((1, tokens), VIDEO),
        None,
        torch.from_numpy(grids),
        second_per_grid_ts=torch.from_numpy(seconds),
        attention_mask=torch.ones(1, tokens, dtype=torch.long),
    )
    for rule in VIDEO_SECONDS:
        intervals = video_intervals(tokens_per_second, seconds, 1, rule)
        actual = mrope_positions(
            np.full((1, tokens), VIDEO), np.ones((1, tokens)), np.zeros((0, 3)), grids, merge, intervals
        )
        if np.array_equal(actual, expected.cpu().numpy()):
            return rule
    raise ValueError(
        "graphprune cannot reproduce this transformers version's Qwen2.5-VL get_rope_index video positions (neither "
        f"of the rules {VIDEO_SECONDS} of transformers 5.17-5.23); install transformers>=5.17,<5.24 to export"
    )


def _features(vision: _Vision, pixel_values, grids, layout: dict, hidden: int, device) -> torch.Tensor:
    """The features of every image (or video) in order: one vision run per segment."""
    if pixel_values is None:
        return torch.zeros(0, hidden, device=device)
    segments = vision_segments(pixel_values, grids.cpu().numpy(), layout["spatial_merge_size"], layout["vision_window"])
    with torch.no_grad():
        return torch.cat(
            [vision(*(torch.as_tensor(value, device=device) for value in feeds.values())) for feeds in segments]
        )


def _at_least_two_rows(features: torch.Tensor) -> torch.Tensor:
    """Export examples need a size of 2 or more on a dynamic axis (0 and 1 are specialised); extra rows go unused."""
    return torch.cat([features, features.new_zeros(max(2 - features.shape[0], 0), features.shape[1])])


def _windowed(model: nn.Module) -> bool:
    """Qwen2.5-VL's vision tower: attention within windows except in its full-attention blocks."""
    return hasattr(model.model.visual, "fullatt_block_indexes")


def vision_layout(model: nn.Module) -> dict:
    """What the host needs to cut segments and form positions: the merge size, Qwen2.5-VL's window
    (merge blocks per side), tokens per second of video and ``video_seconds``, the installed transformers'
    ``VIDEO_SECONDS`` rule (both None for Qwen2-VL)."""
    vision = model.config.vision_config
    merge, windowed = vision.spatial_merge_size, _windowed(model)
    tokens_per_second = vision.tokens_per_second if windowed else None
    return {
        "spatial_merge_size": merge,
        "vision_window": vision.window_size // merge // vision.patch_size if windowed else None,
        "tokens_per_second": tokens_per_second,
        "video_seconds": _video_seconds(model, merge, tokens_per_second) if windowed else None,
    }


def vision_graph(model: nn.Module) -> _Vision:
    """The module that ``vision.onnx`` is exported from: one segment in, its merged features out."""
    return (_WindowedVision if _windowed(model) else _Vision)(model).eval()


def qwen2_vl(model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
    """The graphs of a Qwen2-VL or Qwen2.5-VL export and what the manifest records about the model;
    see ``export.onnx``."""
    config = model.config
    input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
    image_grids, video_grids = example_inputs.get("image_grid_thw"), example_inputs.get("video_grid_thw")
    if image_grids is None and video_grids is None:
        raise ValueError(
            "example_inputs must hold at least one image or video (pixel_values and image_grid_thw, or "
            "pixel_values_videos and video_grid_thw)"
        )
    visual_ids = (config.image_token_id, config.video_token_id)
    max_visual = token_budget(input_ids, visual_ids, max_visual_tokens)
    layout, hidden, device = vision_layout(model), config.text_config.hidden_size, input_ids.device
    merge = layout["spatial_merge_size"]
    vision = vision_graph(model)
    embed = FeatureEmbedding(model, visual_ids)
    image_features = _features(vision, example_inputs.get("pixel_values"), image_grids, layout, hidden, device)
    video_features = _features(vision, example_inputs.get("pixel_values_videos"), video_grids, layout, hidden, device)
    types = example_inputs.get("mm_token_type_ids")
    types = token_types(input_ids.cpu().numpy(), *visual_ids) if types is None else types.cpu().numpy()
    empty = np.zeros((0, 3), np.int64)
    seconds = example_inputs.get("second_per_grid_ts")
    positions = mrope_positions(
        types,
        attention_mask.cpu().numpy(),
        empty if image_grids is None else image_grids.cpu().numpy(),
        empty if video_grids is None else video_grids.cpu().numpy(),
        merge,
        video_intervals(
            layout["tokens_per_second"],
            None if seconds is None else seconds.cpu().numpy(),
            0 if video_grids is None else len(video_grids),
            layout["video_seconds"],
        ),
    )
    positions = torch.from_numpy(positions).to(device)
    new_token = (max(visual_ids) + 1) % config.text_config.vocab_size
    new_ids = torch.full((input_ids.shape[0], NEW_TOKENS), new_token, device=device)
    with torch.no_grad():
        embeds, visual = embed(input_ids, image_features, video_features)
        new_embeds, _ = embed(new_ids, image_features[:0], video_features[:0])
    new_positions = positions[..., -1:] + torch.arange(1, NEW_TOKENS + 1, device=device)
    decoders, top_k = decoder_graphs(
        model, state, (embeds, attention_mask, positions, visual), (new_embeds, new_positions), max_visual, prune
    )
    kind, pixels = ("image", "pixel_values") if image_grids is not None else ("video", "pixel_values_videos")
    segment = next(
        vision_segments(
            example_inputs[pixels], example_inputs[f"{kind}_grid_thw"][:1].cpu().numpy(), merge, layout["vision_window"]
        )
    )
    axes = {
        "pixel_values": "patches",
        "vision_position_ids": "patches",
        "window_index": "blocks",
        "window_ids": "patches",
    }
    graphs = [
        GraphExport(
            "vision",
            vision,
            tuple(torch.as_tensor(value, device=device) for value in segment.values()),
            tuple(segment),
            ("image_features",),
            {name: {0: axes[name]} for name in segment},
        ),
        embed_graph(
            embed,
            input_ids,
            {
                "image_features": _at_least_two_rows(image_features),
                "video_features": _at_least_two_rows(video_features),
            },
        ),
        *decoders,
    ]
    details = {
        "family": state.adapter.name,
        "model": model_details(
            model,
            state,
            video_token_id=config.video_token_id,
            **layout,
            pixel_features=math.prod(example_inputs[pixels].shape[1:]),
        ),
        "visual_budget": {"max_visual": max_visual, "top_k": top_k},
        "first_pruned_layer": state.method.k if prune else None,
    }
    return graphs, details
