"""Tiny Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``: image
splitting into tiles, pixel-shuffle connector) and their inputs."""

from __future__ import annotations

import functools

import torch
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
)

from ...methods import FastV
from ...testing.common import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TinyDecoder,
    left_padded,
    llama_text_config,
    sample_generators,
    text_ids,
    vision_tower,
)
from ...testing.contract import ContractCase

CLASSES = {
    "idefics3": (Idefics3Config, Idefics3ForConditionalGeneration),
    "smolvlm": (SmolVLMConfig, SmolVLMForConditionalGeneration),
}


def tiny_idefics3(
    *, version: str = "idefics3", image_size: int = 16, patch_size: int = 4, **decoder
) -> Idefics3ForConditionalGeneration | SmolVLMForConditionalGeneration:
    """An ``Idefics3ForConditionalGeneration`` (``version="idefics3"``) or ``SmolVLMForConditionalGeneration``
    (``"smolvlm"``): Llama decoder of ``decoder`` (:class:`TinyDecoder`'s keywords), two-layer vision tower; a tile
    of ``image_size`` pixels gives ``(image_size / patch_size / 2)²`` features after the pixel shuffle; in eval
    mode."""
    if version not in CLASSES:
        raise ValueError(f"graphprune.testing: version must be one of {list(CLASSES)}; got {version!r}")
    tiny = TinyDecoder.of(decoder)
    config_class, model_class = CLASSES[version]
    config = config_class(
        text_config=llama_text_config(*tiny.shape),
        vision_config=vision_tower(image_size, patch_size),
        image_token_id=IMAGE_TOKEN_ID,
        scale_factor=2,
        pad_token_id=PAD_TOKEN_ID,
    )
    return tiny.build(model_class, config)


def idefics3_inputs(model, samples: list[tuple[int, list[tuple[int, int]], int]], seed: int = 0) -> dict:
    """Left-padded inputs; each sample is ``(text_before, image grids (rows, cols), text_after)``.

    As Idefics3's processor lays an image out: a 1x1 grid is one global tile between text tokens; a larger
    grid is each tile after two text tokens (``<fake_token_around_image><row_r_col_c>``), one text token
    (newline) after each row, then the global tile after three and before one. Every tile gives one block
    of ``image_seq_len`` features. ``pixel_values`` is ``[B, tiles, 3, H, W]``, zero tiles padding samples
    with fewer.
    """
    vocab, side = model.config.text_config.vocab_size, model.config.vision_config.image_size
    per_tile = model.model.image_seq_len
    rows, tiles = [], []
    for (before, grids, after), generator in sample_generators(samples, seed):
        row, count = text_ids(generator, vocab, before), 0
        for grid_rows, grid_cols in grids:
            for _ in range(grid_rows if grid_rows * grid_cols > 1 else 0):
                for _ in range(grid_cols):
                    row += text_ids(generator, vocab, 2) + [IMAGE_TOKEN_ID] * per_tile
                row += text_ids(generator, vocab, 1)
            row += text_ids(generator, vocab, 2 + (grid_rows * grid_cols > 1)) + [IMAGE_TOKEN_ID] * per_tile
            row += text_ids(generator, vocab, 1)
            count += grid_rows * grid_cols + (grid_rows * grid_cols > 1)
        rows.append(row + text_ids(generator, vocab, after))
        tiles.append(torch.randn((count, 3, side, side), generator=generator))
    inputs = left_padded(rows)
    if any(len(t) for t in tiles):
        pixel_values = torch.zeros((len(tiles), max(len(t) for t in tiles), 3, side, side))
        for b, sample_tiles in enumerate(tiles):
            pixel_values[b, : len(sample_tiles)] = sample_tiles
        inputs["pixel_values"] = pixel_values.to(model.dtype)
    return inputs


# tiles of 4 features, each block between text tokens: 2x2 grid + global | 1x1, 1x2 + global | 1x1; Llama
CONTRACT = {
    name: ContractCase(
        functools.partial(tiny_idefics3, version=version),
        idefics3_inputs,
        [(3, [(2, 2)], 4), (2, [(1, 1), (1, 2)], 3), (5, [(1, 1)], 2)],
        [(4, [], 3), (6, [], 2)],
        (FastV(k=2, keep=0.5), FastV(k=1, keep=0.25, query="mean")),
        (FastV(k=2, keep=0.5),),
    )
    for name, version in [
        ("Idefics3ForConditionalGeneration", "idefics3"),
        ("SmolVLMForConditionalGeneration", "smolvlm"),
    ]
}

__all__ = ["idefics3_inputs", "tiny_idefics3"]
