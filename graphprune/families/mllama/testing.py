"""Tiny Mllama (LLaMA-3.2-Vision, ``MllamaForConditionalGeneration``) and its inputs."""

from __future__ import annotations

import torch
from transformers import MllamaConfig, MllamaForConditionalGeneration

from ...methods import CrossAttentionTrim
from ...testing.common import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TinyDecoder,
    sample_generators,
    text_config,
    text_ids,
    vision_tower,
)
from ...testing.contract import ContractCase


def tiny_mllama(
    *, cross_attention_layers: tuple[int, ...] = (1, 3, 4), image_size: int = 56, patch_size: int = 14, **decoder
) -> MllamaForConditionalGeneration:
    """A ``MllamaForConditionalGeneration`` (LLaMA-3.2-Vision layout; ``decoder``: :class:`TinyDecoder`'s keywords,
    5 layers unless given) with cross-attention at ``cross_attention_layers``, up to 4 tiles per image and
    ``(image_size / patch_size)² + 1`` features per tile; in eval mode.

    The cross-attention gates (zero at init, which would make cross-attention a no-op) are set to 1,
    and the cross-attention q/k norms are scaled by ``qk_gain`` so that rankings are not flat.
    """
    tiny = TinyDecoder.of(decoder, num_layers=5)
    text = text_config(*tiny.shape, cross_attention_layers=list(cross_attention_layers), bos_token_id=1, eos_token_id=2)
    vision = vision_tower(
        image_size,
        patch_size,
        num_global_layers=1,
        vision_output_dim=64,
        intermediate_layers_indices=[0],
    )
    config = MllamaConfig(text_config=text, vision_config=vision, image_token_index=IMAGE_TOKEN_ID)
    model = tiny.build(MllamaForConditionalGeneration, config)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if hasattr(layer, "cross_attn"):
                layer.cross_attn_attn_gate.fill_(1.0)
                layer.cross_attn_mlp_gate.fill_(1.0)
                layer.cross_attn.q_norm.weight.fill_(tiny.qk_gain)
                layer.cross_attn.k_norm.weight.fill_(tiny.qk_gain)
    return model


def features_per_tile(model: MllamaForConditionalGeneration) -> int:
    return model.model.vision_model.num_patches


def mllama_inputs(
    model: MllamaForConditionalGeneration, samples: list[tuple[int, list[int], int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs as ``MllamaProcessor`` lays them out; each sample is
    ``(text_before, tiles_per_image, text_after)``, e.g. ``(3, [4, 2], 5)``: two images of 4 and 2 tiles.

    Each image is one image token; the text from it up to the next image (the last: to the end)
    attends to that image's real tiles. Padding tiles and missing images have zero pixels, aspect
    ratio id 0 and a zero mask, as the processor makes them.
    """
    vocab = model.config.text_config.vocab_size
    vision = model.config.vision_config
    max_tiles, side = vision.max_num_tiles, vision.image_size
    ratio_ids = {tiles: vision.supported_aspect_ratios.index([1, tiles]) + 1 for tiles in range(1, max_tiles + 1)}
    rows, image_starts, tile_pixels = [], [], []
    for (before, tiles, after), generator in sample_generators(samples, seed):
        row, starts = text_ids(generator, vocab, before), []
        for image in range(len(tiles)):
            starts.append(len(row))
            row += [IMAGE_TOKEN_ID] + text_ids(generator, vocab, int(image < len(tiles) - 1))
        rows.append(row + text_ids(generator, vocab, after))
        image_starts.append(starts)
        tile_pixels.append([torch.randn((n, 3, side, side), generator=generator) for n in tiles])
    length = max(len(row) for row in rows)
    max_images = max(1, max(len(tiles) for _, tiles, _ in samples))
    batch = len(rows)
    input_ids = torch.full((batch, length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    cross_attention_mask = torch.zeros(batch, length, max_images, max_tiles, dtype=torch.long)
    pixel_values = torch.zeros(batch, max_images, max_tiles, 3, side, side)
    aspect_ratio_ids = torch.zeros(batch, max_images, dtype=torch.long)
    aspect_ratio_mask = torch.zeros(batch, max_images, max_tiles, dtype=torch.long)
    for b, ((_, tiles, _), row, starts) in enumerate(zip(samples, rows, image_starts, strict=True)):
        offset = length - len(row)
        input_ids[b, offset:] = torch.tensor(row)
        attention_mask[b, offset:] = 1
        ends = [*starts[1:], len(row)][: len(starts)]
        for image, (n_tiles, start, end) in enumerate(zip(tiles, starts, ends, strict=True)):
            cross_attention_mask[b, offset + start : offset + end, image, :n_tiles] = 1
            pixel_values[b, image, :n_tiles] = tile_pixels[b][image]
            aspect_ratio_ids[b, image] = ratio_ids[n_tiles]
            aspect_ratio_mask[b, image, :n_tiles] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(tiles for _, tiles, _ in samples):
        inputs |= {
            "pixel_values": pixel_values.to(model.dtype),
            "aspect_ratio_ids": aspect_ratio_ids,
            "aspect_ratio_mask": aspect_ratio_mask,
            "cross_attention_mask": cross_attention_mask,
        }
    return inputs


# (text_before, tiles per image, text_after): 17 features per tile, 4 tile slots per image.
MLLAMA_BATCH = [(1, [4], 5), (2, [2], 3), (0, [1], 6)]

CONTRACT = {
    "MllamaForConditionalGeneration": ContractCase(
        tiny_mllama,
        mllama_inputs,
        MLLAMA_BATCH,
        [(4, [], 3), (6, [], 2)],
        tuple(CrossAttentionTrim(keep, select) for select in ("head_union", "topk") for keep in (0.25, 0.5)),
        (CrossAttentionTrim(0.5, "head_union"), CrossAttentionTrim(0.5, "topk")),
    ),
}

__all__ = ["MLLAMA_BATCH", "features_per_tile", "mllama_inputs", "tiny_mllama"]
