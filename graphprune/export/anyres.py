"""LLaVA-NeXT's any-resolution packing on the host (numpy), as transformers' ``modeling_llava_next`` does it.

An image of size ``(height, width)`` is cut into a base crop and a grid of crops (the grid pinpoint that
``select_best_resolution`` picks). Its features are the base crop's patches, then the grid's patches row by
row, unpadded to the image's aspect ratio (``unpad_image``), with one ``image_newline`` after every row
(``pack_image_features``). Which rows go where depends only on the image sizes, so the host forms one gather
index over the crops' patch features, and ``vision.onnx`` gathers them (the newline being the row after the
last patch).
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


def crop_counts(sizes: np.ndarray, pinpoints: list, side: int) -> list[int]:
    """The crops of each image of ``sizes``, base crop included."""
    return [_crops(*best_resolution(tuple(size), pinpoints), side) for size in sizes.tolist()]


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


def pack_index(sizes: np.ndarray, pinpoints: list, side: int, grid: int) -> np.ndarray:
    """For every image token of the images of ``sizes`` (``[images, 2]``, height and width), in order, the row
    of the crops' patch features ``[crops x grid², hidden]`` it takes; the newline is row ``crops x grid²``."""
    patches = grid * grid
    counts = crop_counts(sizes, pinpoints, side)
    newline, first, index = sum(counts) * patches, 0, []
    for size, count in zip(sizes.tolist(), counts, strict=True):
        crop_rows, crop_columns = crop_grid(tuple(size), pinpoints, side)
        index.append(np.arange(first * patches, (first + 1) * patches))
        rows, columns = _unpadded(tuple(size), crop_rows * grid, crop_columns * grid)
        row, column = np.meshgrid(np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64), indexing="ij")
        crop = first + 1 + (row // grid) * crop_columns + column // grid
        grid_index = crop * patches + (row % grid) * grid + column % grid
        index.append(np.concatenate([grid_index, np.full((len(rows), 1), newline)], axis=1).reshape(-1))
        first += count
    return np.concatenate(index) if index else np.zeros(0, np.int64)


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
