"""Qwen2-VL's M-RoPE position ids on the host, as HF's ``get_rope_index`` forms them (ONNX Runtime has none).

The decoder graphs of a Qwen2-VL or Qwen2.5-VL export take position ids ``[3, B, N]`` (time, height,
width); ``mrope_positions`` computes them from the token types and the image and video grids, for
the export's examples and for ``OrtGenerator``'s prompts.
"""

from __future__ import annotations

import itertools

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids, as Qwen2-VL's processor writes them
KIND_NAMES = {IMAGE: "image", VIDEO: "video"}


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


def prompt_positions(layout: dict, types, attention_mask, image_grids, video_grids, second_per_grid_ts) -> np.ndarray:
    """``mrope_positions`` of a prompt, from the processor's outputs as arrays (a grid or the seconds None when
    absent) and the vision ``layout`` (``spatial_merge_size``, ``tokens_per_second``, ``video_seconds``)."""
    empty = np.zeros((0, 3), np.int64)
    return mrope_positions(
        types,
        attention_mask,
        empty if image_grids is None else image_grids,
        empty if video_grids is None else video_grids,
        layout["spatial_merge_size"],
        video_intervals(
            layout.get("tokens_per_second"),
            second_per_grid_ts,
            0 if video_grids is None else len(video_grids),
            layout.get("video_seconds"),
        ),
    )
