"""LLaVA-NeXT's any-resolution packing on the host (numpy), as transformers' ``modeling_llava_next`` does it.

An image of size ``(height, width)`` is cut into a base crop and a grid of crops (the grid pinpoint that
``select_best_resolution`` picks). Its features are the base crop's patches, then the grid's patches row by
row, unpadded to the image's aspect ratio (``unpad_image``), with one ``image_newline`` after every row
(``pack_image_features``). Which rows go where depends only on the image sizes, so the host forms one gather
index over the crops' patch features, and ``vision.onnx`` gathers them (the newline being the row after the
last patch).

LLaVA-OneVision packs the same way, then shrinks a grid larger than ``anyres_max_N`` allows with bilinear
interpolation, and pools video frames 2x2 the same way. Bilinear interpolation is a weighted sum of four
rows per output, so the host forms four rows and two pairs of weights per token (``blend_index``,
``pooled_index``) and ``vision.onnx`` gathers and blends them.
"""

from __future__ import annotations

import math

import numpy as np


def best_resolution(size: tuple[int, int], pinpoints: list) -> tuple[int, int]:
    """The ``(height, width)`` pinpoint for an image of ``size``, as ``select_best_resolution`` picks it."""
    height, width = size
    best, most_effective, least_wasted = None, 0, float("inf")
    for pin_height, pin_width in pinpoints:
        scale = min(pin_width / width, pin_height / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_width * pin_height - effective
        if effective > most_effective or (effective == most_effective and wasted < least_wasted):
            best, most_effective, least_wasted = (pin_height, pin_width), effective, wasted
    return best


def crop_grid(size: tuple[int, int], pinpoints: list, side: int) -> tuple[int, int]:
    """The rows and columns of crops (of ``side`` pixels) that an image of ``size`` is cut into, base crop aside
    (``get_anyres_image_grid_shape``)."""
    height, width = best_resolution(size, pinpoints)
    return height // side, width // side


def _crops(height: int, width: int, side: int) -> int:
    """The crops of a ``height x width`` pinpoint, base crop included (``image_size_to_num_patches``)."""
    return math.ceil(height / side) * math.ceil(width / side) + 1


def crop_counts(sizes: np.ndarray, pinpoints: list, side: int, patched: list[bool] | None = None) -> list[int]:
    """The crops of each image of ``sizes``, base crop included; one for an image not ``patched`` (LLaVA-OneVision's
    several images in a prompt; default: every image is patched)."""
    patched = [True] * len(sizes) if patched is None else patched
    return [
        _crops(*best_resolution(tuple(size), pinpoints), side) if patch else 1
        for size, patch in zip(sizes.tolist(), patched, strict=True)
    ]


def most_crops(pinpoints: list, side: int) -> int:
    """The most crops an image can take (its best pinpoint being the one with the most)."""
    return max(_crops(height, width, side) for height, width in pinpoints)


def _unpadded(size: tuple[int, int], rows: int, columns: int) -> tuple[range, range]:
    """The rows and columns of a ``rows x columns`` patch grid that ``unpad_image`` keeps for an image of ``size``."""
    height, width = size
    if width / height > columns / rows:
        padding = (rows - int(round(height * (columns / width), 7))) // 2
        return range(padding, rows - padding), range(columns)
    padding = (columns - int(round(width * (rows / height), 7))) // 2
    return range(rows), range(padding, columns - padding)


def _grid_rows(size: tuple[int, int], pinpoints: list, side: int, grid: int, first: int) -> np.ndarray:
    """``[rows, columns]``: the row of the crops' patch features at each position of the unpadded crop grid of
    an image of ``size`` whose base crop is crop ``first``."""
    patches = grid * grid
    crop_rows, crop_columns = crop_grid(size, pinpoints, side)
    rows, columns = _unpadded(size, crop_rows * grid, crop_columns * grid)
    row, column = np.meshgrid(np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64), indexing="ij")
    crop = first + 1 + (row // grid) * crop_columns + column // grid
    return crop * patches + (row % grid) * grid + column % grid


def pack_index(sizes: np.ndarray, pinpoints: list, side: int, grid: int) -> np.ndarray:
    """For every image token of the images of ``sizes`` (``[images, 2]``, height and width), in order, the row
    of the crops' patch features ``[crops x grid², hidden]`` it takes; the newline is row ``crops x grid²``."""
    patches = grid * grid
    counts = crop_counts(sizes, pinpoints, side)
    newline, first, index = sum(counts) * patches, 0, []
    for size, count in zip(sizes.tolist(), counts, strict=True):
        index.append(np.arange(first * patches, (first + 1) * patches))
        grid_rows = _grid_rows(tuple(size), pinpoints, side, grid, first)
        index.append(np.concatenate([grid_rows, np.full((len(grid_rows), 1), newline)], axis=1).reshape(-1))
        first += count
    return np.concatenate(index) if index else np.zeros(0, np.int64)


def bilinear_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``([size_out, 2] inputs, [size_out, 2] weights)``: the two inputs each output blends along one axis and
    their weights, in float32 as torch's ``interpolate(mode="bilinear", align_corners=False)`` forms them."""
    scale = np.float32(size_in) / np.float32(size_out)
    source = np.maximum(scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    low = np.minimum(source.astype(np.int64), size_in - 1)
    weight = np.clip(source - low.astype(np.float32), 0, 1)
    return np.stack([low, np.minimum(low + 1, size_in - 1)], -1), np.stack([1 - weight, weight], -1)


def resampled(grid_rows: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``grid_rows [R, C]`` bilinearly resampled to ``height x width``, row by row: per output the four rows it
    blends ``[tokens, 4]`` (top left, top right, bottom left, bottom right) and weights ``[tokens, 4]`` (top,
    bottom, left, right); unchanged (weights 1, 0, 1, 0) if the size is."""
    rows, columns = grid_rows.shape
    if (height, width) == (rows, columns):
        return untouched(grid_rows.reshape(-1))
    (row, row_weight), (column, column_weight) = bilinear_taps(rows, height), bilinear_taps(columns, width)
    taps = grid_rows[row[:, None, :, None], column[None, :, None, :]]  # [height, width, 2, 2]
    weights = np.concatenate(np.broadcast_arrays(row_weight[:, None], column_weight[None]), axis=-1)
    return taps.reshape(-1, 4), weights.reshape(-1, 4)


def untouched(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` taken as they are, in ``resampled``'s form."""
    return np.repeat(rows[:, None], 4, axis=1), np.tile(np.array([1, 0, 1, 0], np.float32), (len(rows), 1))


def shrunk(rows: int, columns: int, grid: int, max_crops: int) -> tuple[int, int]:
    """The size that ``anyres_max_{max_crops}`` shrinks a ``rows x columns`` unpadded grid of crops of
    ``grid x grid`` patches to (``pack_image_features``: more than 1.1 x the area of ``max_crops`` crops)."""
    ratio = math.sqrt(rows * columns / (max_crops * grid**2))
    return (int(rows // ratio), int(columns // ratio)) if ratio > 1.1 else (rows, columns)


def blend_index(
    sizes: np.ndarray, patched: list[bool], pinpoints: list, side: int, grid: int, max_crops: int
) -> tuple[np.ndarray, np.ndarray]:
    """LLaVA-OneVision's image tokens, as ``resampled`` gives them, over the crops' patch features (row
    ``crops x grid²`` is the newline): a ``patched`` image's base crop, then its unpadded grid shrunk to
    ``anyres_max_{max_crops}`` with a newline after every row; any other image's one crop and a newline."""
    patches = grid * grid
    counts = crop_counts(sizes, pinpoints, side, patched)
    newline, first, parts = sum(counts) * patches, 0, []
    for size, count, patch in zip(sizes.tolist(), counts, patched, strict=True):
        parts.append(untouched(np.arange(first * patches, (first + 1) * patches)))
        if patch:
            grid_rows = _grid_rows(tuple(size), pinpoints, side, grid, first)
            height, width = shrunk(*grid_rows.shape, grid, max_crops)
            parts.append(_newline_ended(resampled(grid_rows, height, width), height, width, newline))
        else:
            parts.append(untouched(np.array([newline])))
        first += count
    return _joined(parts)


def pooled_index(videos: int, frames: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """LLaVA-OneVision's video tokens over the frames' patch features ``[videos x frames x grid², hidden]``:
    each frame's ``grid x grid`` patches bilinearly pooled to ``ceil(grid / 2)`` a side, then one newline per
    video (row ``videos x frames x grid²``)."""
    pooled, patches = math.ceil(grid / 2), grid * grid
    parts = []
    for video in range(videos):
        for frame in range(video * frames, (video + 1) * frames):
            parts.append(resampled(frame * patches + np.arange(patches).reshape(grid, grid), pooled, pooled))
        parts.append(untouched(np.array([videos * frames * patches])))
    return _joined(parts)


def _newline_ended(blend: tuple[np.ndarray, np.ndarray], rows: int, columns: int, newline: int) -> tuple:
    """``blend`` (``resampled``'s form) of a ``rows x columns`` grid, row ``newline`` after each of its rows."""
    ends = untouched(np.full(rows, newline))
    return tuple(
        np.concatenate([part.reshape(rows, columns, 4), end[:, None]], axis=1).reshape(-1, 4)
        for part, end in zip(blend, ends, strict=True)
    )


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros((0, 4), np.int64), np.zeros((0, 4), np.float32)
    return np.concatenate([taps for taps, _ in parts]), np.concatenate([weights for _, weights in parts])


def crop_index(shape: tuple[int, ...], counts: list[int]) -> np.ndarray:
    """Which crops of ``pixel_values.reshape(-1, 3, H, W)`` are the images' crops, in order, for ``pixel_values``
    of ``shape``: the processor's ``[images, most crops, 3, H, W]`` (zero crops pad images with fewer) or crops
    already stacked, ``[crops, 3, H, W]``, as ``get_image_features`` takes both."""
    if len(shape) == 5:
        if shape[0] != len(counts):
            raise ValueError(f"pixel_values holds {shape[0]} images; image_sizes gives {len(counts)}")
        if shape[1] < max(counts, default=0):
            raise ValueError(f"pixel_values holds {shape[1]} crops per image; image_sizes needs {max(counts)}")
        return np.concatenate([image * shape[1] + np.arange(count) for image, count in enumerate(counts)])
    if len(shape) != 4 or shape[0] != sum(counts):
        raise ValueError(
            f"pixel_values must be [images, crops, 3, H, W] or [{sum(counts)} crops, 3, H, W] for these image_sizes; "
            f"got shape {tuple(shape)}"
        )
    return np.arange(shape[0])
