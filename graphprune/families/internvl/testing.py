"""Tiny InternVL (``InternVLForConditionalGeneration``, InternVL3: image tiles, pixel shuffle) and its inputs."""

from __future__ import annotations

import torch
from transformers import InternVLConfig, InternVLForConditionalGeneration

from ...methods import FastV
from ...testing.common import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TinyDecoder,
    left_padded,
    sample_generators,
    text_config,
    text_ids,
    vision_tower,
)
from ...testing.contract import ContractCase


def tiny_internvl(*, image_size: int = 16, patch_size: int = 4, **decoder) -> InternVLForConditionalGeneration:
    """An ``InternVLForConditionalGeneration`` (Qwen2 decoder of ``decoder``: :class:`TinyDecoder`'s keywords;
    two-layer InternViT): a tile of ``image_size`` pixels gives ``(image_size / patch_size / 2)²`` features after
    the pixel shuffle; in eval mode."""
    tiny = TinyDecoder.of(decoder)
    config = InternVLConfig(
        text_config=text_config(*tiny.shape, model_type="qwen2", max_position_embeddings=4096),
        vision_config=vision_tower([image_size, image_size], [patch_size, patch_size]),
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_layer=-1,
        pad_token_id=PAD_TOKEN_ID,
    )
    return tiny.build(InternVLForConditionalGeneration, config)


def tile_tokens(model: InternVLForConditionalGeneration) -> int:
    """Features per tile: the tile's patches, pixel-shuffled by the config's ``downsample_ratio``."""
    vision = model.config.vision_config
    return int((vision.image_size[0] // vision.patch_size[0] * model.config.downsample_ratio) ** 2)


def internvl_inputs(
    model: InternVLForConditionalGeneration, samples: list[tuple[int, list[int], int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, tiles per image, text_after)``.

    An image is one text token (``<img>``), its tiles' feature blocks back to back, one text token
    (``</img>``), as InternVL's processor lays them out; ``pixel_values`` is ``[tiles, 3, H, W]``, every
    tile of every image in sample order.
    """
    vocab, side = model.config.text_config.vocab_size, model.config.vision_config.image_size[0]
    per_tile = tile_tokens(model)
    rows, tiles = [], []
    for (before, image_tiles, after), generator in sample_generators(samples, seed):
        row = text_ids(generator, vocab, before)
        for count in image_tiles:
            row += text_ids(generator, vocab, 1) + [IMAGE_TOKEN_ID] * (count * per_tile) + text_ids(generator, vocab, 1)
            tiles.append(torch.randn((count, 3, side, side), generator=generator))
        rows.append(row + text_ids(generator, vocab, after))
    inputs = left_padded(rows)
    if tiles:
        inputs["pixel_values"] = torch.cat(tiles).to(model.dtype)
    return inputs


# tiles of 4 features: 5 tiles | 3 + 1 (two images, two spans) | 2 tiles; Qwen2 decoder
CONTRACT = {
    "InternVLForConditionalGeneration": ContractCase(
        tiny_internvl,
        internvl_inputs,
        [(3, [5], 4), (2, [3, 1], 3), (5, [2], 2)],
        [(4, [], 3), (6, [], 2)],
        (FastV(k=2, keep=0.5), FastV(k=1, keep=0.25, query="mean")),
        (FastV(k=2, keep=0.5),),
    ),
}

__all__ = ["internvl_inputs", "tiny_internvl"]
