"""The files of a Qwen2-VL export (FastV, arXiv 2403.06764): vision encoder + merger, embedding, decoder graphs.

``vision.onnx`` runs one attention segment, an image or one temporal patch group of a video (the
vision blocks never attend across segments): ``pixel_values [patches, C·T·p·p]`` and
``vision_position_ids [patches, 2]`` (each patch's row and column, in the processor's merge-block
order) give ``[patches / merge², hidden]``. ``embed.onnx`` places image features at image tokens
and video features at video tokens. The decoder graphs (``decoder_graphs``) take M-RoPE position
ids ``[3, B, N]``, which the host computes as HF's ``get_rope_index`` does (``mrope_positions``); a
new token continues each row from the last prompt position, as HF ``generate`` does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from .decoder_graphs import NEW_TOKENS, FeatureEmbedding, decoder_graphs
from .graph_export import GraphExport

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids, as Qwen2-VL's processor writes them
EXPORTABLE = ("Qwen2VLForConditionalGeneration",)


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
        visual = self.visual
        hidden = visual.patch_embed(pixel_values)
        freqs = (vision_position_ids[..., None].float() * visual.rotary_pos_emb.inv_freq).flatten(1)
        angles = torch.cat([freqs, freqs], dim=-1)[:, None]  # [patches, 1, head_dim]
        cos, sin = angles.cos(), angles.sin()
        for block in visual.blocks:
            attention = block.attn
            query, key, value = attention.qkv(block.norm1(hidden)).unflatten(-1, (3, attention.num_heads, -1)).unbind(1)
            query, key = ((x.float() * cos + _rotate_half(x.float()) * sin).to(x.dtype) for x in (query, key))
            heads = nn.functional.scaled_dot_product_attention(  # [1, heads, patches, head_dim]: ONNX takes 4-D
                *(x.transpose(0, 1)[None] for x in (query, key, value)), scale=attention.scaling
            )
            hidden = hidden + attention.proj(heads[0].transpose(0, 1).flatten(1))
            hidden = hidden + block.mlp(block.norm2(hidden))
        return visual.merger(hidden)


def vision_positions(height: int, width: int, merge: int) -> np.ndarray:
    """``[height·width, 2]`` (row, column) of each patch of a segment, in merge-block order (HF's vision positions)."""
    rows, columns = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    blocks = (height // merge, merge, width // merge, merge)
    return np.stack([axis.reshape(blocks).transpose(0, 2, 1, 3).ravel() for axis in (rows, columns)], axis=-1)


def vision_segments(pixel_values: np.ndarray, grids: np.ndarray, merge: int):
    """``(pixel rows, vision_position_ids)`` of every segment, in order: each image, each video's temporal groups."""
    start = 0
    for t, h, w in np.asarray(grids).tolist():
        positions = vision_positions(h, w, merge)
        for _ in range(t):
            yield pixel_values[start : start + h * w], positions
            start += h * w


def mrope_positions(
    token_types: np.ndarray, attention_mask: np.ndarray, image_grids, video_grids, merge: int
) -> np.ndarray:
    """M-RoPE position ids ``[3, B, N]`` as HF's ``get_rope_index`` (transformers 5) forms them.

    Text counts on in all three rows; an image or video spans its ``(t, h / merge, w / merge)``
    grid from the current position, and the text after it starts ``max(h, w) / merge`` later.
    Padding positions get 0. ``token_types``: 0 text, 1 image, 2 video (``mm_token_type_ids``).
    """
    positions = np.zeros((3, *token_types.shape), dtype=np.int64)
    grids = {IMAGE: iter(np.asarray(image_grids).tolist()), VIDEO: iter(np.asarray(video_grids).tolist())}
    for b in range(token_types.shape[0]):
        real = attention_mask[b].astype(bool)
        pieces, current = [], 0
        for kind, group in itertools.groupby(token_types[b][real].tolist()):
            count = len(list(group))
            if kind == TEXT:
                pieces.append(np.broadcast_to(np.arange(count) + current, (3, count)))
                current += count
                continue
            while count > 0:  # consecutive spans of one kind: one grid each
                t, h, w = next(grids[kind])
                grid = np.stack(np.meshgrid(np.arange(t), np.arange(h // merge), np.arange(w // merge), indexing="ij"))
                pieces.append(grid.reshape(3, -1) + current)
                current += max(h, w) // merge
                count -= t * (h // merge) * (w // merge)
        positions[:, b, real] = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
    return positions


def token_types(input_ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
    """``mm_token_type_ids`` from the placeholder ids, for callers that do not pass the processor's."""
    return np.where(input_ids == image_token_id, IMAGE, np.where(input_ids == video_token_id, VIDEO, TEXT))


def _features(vision: _Vision, pixel_values, grids, merge: int, hidden: int, device) -> torch.Tensor:
    """The features of every image (or video) in order: one vision run per segment."""
    if pixel_values is None:
        return torch.zeros(0, hidden, device=device)
    with torch.no_grad():
        segments = [
            vision(rows, torch.from_numpy(positions).to(device))
            for rows, positions in vision_segments(pixel_values, grids.cpu().numpy(), merge)
        ]
    return torch.cat(segments)


def _at_least_two_rows(features: torch.Tensor) -> torch.Tensor:
    """Export examples need a size of 2 or more on a dynamic axis (0 and 1 are specialised); extra rows go unused."""
    return torch.cat([features, features.new_zeros(max(2 - features.shape[0], 0), features.shape[1])])


def qwen2_vl(model: nn.Module, state, example_inputs: dict, max_visual_tokens: int | None, prune: bool):
    """The graphs of a Qwen2-VL export and what the manifest records about the model; see ``export.onnx``."""
    if type(model).__name__ not in EXPORTABLE:
        raise ValueError(
            f"graphprune exports {', '.join(EXPORTABLE)} of the Qwen2-VL family, not {type(model).__name__} "
            "(its windowed vision attention is not written as a graph yet); it runs optimised in PyTorch"
        )
    config = model.config
    input_ids, attention_mask = example_inputs["input_ids"], example_inputs["attention_mask"]
    image_grids, video_grids = example_inputs.get("image_grid_thw"), example_inputs.get("video_grid_thw")
    if image_grids is None and video_grids is None:
        raise ValueError(
            "example_inputs must hold at least one image or video (pixel_values and image_grid_thw, or "
            "pixel_values_videos and video_grid_thw)"
        )
    visual_ids = (config.image_token_id, config.video_token_id)
    most_visual = int(torch.isin(input_ids, torch.tensor(visual_ids)).sum(-1).max())
    max_visual = most_visual if max_visual_tokens is None else max_visual_tokens
    if isinstance(max_visual, bool) or not isinstance(max_visual, int) or max_visual < most_visual:
        raise ValueError(
            f"max_visual_tokens must be an int >= {most_visual} (the most visual tokens a sample of example_inputs "
            f"holds); got {max_visual!r}"
        )
    merge, hidden = config.vision_config.spatial_merge_size, config.text_config.hidden_size
    vision, embed = _Vision(model).eval(), FeatureEmbedding(model, visual_ids)
    device = input_ids.device
    image_features = _features(vision, example_inputs.get("pixel_values"), image_grids, merge, hidden, device)
    video_features = _features(vision, example_inputs.get("pixel_values_videos"), video_grids, merge, hidden, device)
    types = example_inputs.get("mm_token_type_ids")
    types = token_types(input_ids.cpu().numpy(), *visual_ids) if types is None else types.cpu().numpy()
    empty = np.zeros((0, 3), np.int64)
    positions = mrope_positions(
        types,
        attention_mask.cpu().numpy(),
        empty if image_grids is None else image_grids.cpu().numpy(),
        empty if video_grids is None else video_grids.cpu().numpy(),
        merge,
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
    segment_grid = (image_grids if image_grids is not None else video_grids)[0]
    segment_patches = int(segment_grid[1] * segment_grid[2])
    pixels = example_inputs["pixel_values"] if image_grids is not None else example_inputs["pixel_values_videos"]
    segment_positions = torch.from_numpy(vision_positions(*segment_grid[1:].tolist(), merge)).to(device)
    layout = state.adapter.layout(model)
    graphs = [
        GraphExport(
            "vision",
            vision,
            (pixels[:segment_patches], segment_positions),
            ("pixel_values", "vision_position_ids"),
            ("image_features",),
            {"pixel_values": {0: "patches"}, "vision_position_ids": {0: "patches"}},
        ),
        GraphExport(
            "embed",
            embed,
            (input_ids, _at_least_two_rows(image_features), _at_least_two_rows(video_features)),
            ("input_ids", "image_features", "video_features"),
            ("inputs_embeds", "visual_mask"),
            {
                "input_ids": {0: "batch", 1: "sequence"},
                "image_features": {0: "image_tokens"},
                "video_features": {0: "video_tokens"},
            },
        ),
        *decoders,
    ]
    details = {
        "family": state.adapter.name,
        "model": {
            "class": type(model).__name__,
            "num_layers": layout.num_layers,
            "num_kv_heads": layout.num_kv_heads,
            "head_dim": layout.head_dim,
            "hidden_size": hidden,
            "vocab_size": config.text_config.vocab_size,
            "image_token_id": config.image_token_id,
            "video_token_id": config.video_token_id,
            "spatial_merge_size": merge,
            "pixel_features": math.prod(pixels.shape[1:]),
            "pad_token_id": model.generation_config.pad_token_id,
            "eos_token_id": model.generation_config.eos_token_id,
        },
        "visual_budget": {"max_visual": max_visual, "top_k": top_k},
        "first_pruned_layer": state.method.k if prune else None,
    }
    return graphs, details
