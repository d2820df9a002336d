"""Tiny LLaVA-1.5 (``LlavaForConditionalGeneration``) and its inputs."""

from __future__ import annotations

import itertools

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

from ...methods import FastV
from ...testing.common import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TinyDecoder,
    clip_config,
    left_padded,
    llama_text_config,
    sample_generators,
    text_ids,
)
from ...testing.contract import ContractCase


def tiny_llava(*, image_size: int = 32, patch_size: int = 8, **decoder) -> LlavaForConditionalGeneration:
    """A ``LlavaForConditionalGeneration`` with a Llama decoder (``decoder``: :class:`TinyDecoder`'s keywords; GQA
    when ``num_kv_heads < num_heads``) and a CLIP vision tower giving ``(image_size / patch_size)²`` visual tokens
    per image; in eval mode."""
    return llava_family(LlavaConfig, LlavaForConditionalGeneration, image_size, patch_size, decoder)


def llava_family(config_class, model_class, image_size: int, patch_size: int, decoder: dict, **extra):
    """``model_class`` of a LLaVA family: Llama decoder (:class:`TinyDecoder` of ``decoder``), CLIP tower, the
    image token; ``extra`` config entries."""
    tiny = TinyDecoder.of(decoder)
    config = config_class(
        text_config=llama_text_config(*tiny.shape),
        vision_config=clip_config(image_size, patch_size),
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=tiny.vocab_size,
        **extra,
    )
    return tiny.build(model_class, config)


def image_tokens_per_image(model: LlavaForConditionalGeneration) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def llava_inputs(
    model: LlavaForConditionalGeneration, samples: list[tuple[int, int, int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, n_images, text_after)`` token counts.

    Every image contributes ``image_tokens_per_image`` image tokens (one contiguous span per image,
    separated by a text token) and one ``pixel_values`` entry, in sample order as LLaVA expects.
    """
    vocab, side = model.config.text_config.vocab_size, model.config.vision_config.image_size
    per_image = image_tokens_per_image(model)
    rows, images = [], []
    for (before, n_images, after), generator in sample_generators(samples, seed):
        row = text_ids(generator, vocab, before)
        for image in range(n_images):
            row += [IMAGE_TOKEN_ID] * per_image + text_ids(generator, vocab, int(image < n_images - 1))
        rows.append(row + text_ids(generator, vocab, after))
        images += [torch.randn((3, side, side), generator=generator) for _ in range(n_images)]
    inputs = left_padded(rows)
    if images:
        inputs["pixel_values"] = torch.stack(images).to(model.dtype)
    return inputs


# (text_before, n_images, text_after): 16 visual tokens per image; left-padded to the longest.
BATCH = [(5, 1, 4), (2, 2, 3), (6, 0, 3)]
CONTRACT = {
    "LlavaForConditionalGeneration": ContractCase(
        tiny_llava,
        llava_inputs,
        BATCH,
        [(7, 0, 3), (4, 0, 2)],
        tuple(itertools.starmap(FastV, itertools.product((1, 2, 3), (0.25, 0.5, 0.75), ("last", "mean")))),
        (FastV(k=2, keep=0.5), FastV(k=2, keep=0.5, query="mean")),
    ),
}

__all__ = ["BATCH", "image_tokens_per_image", "llava_inputs", "tiny_llava"]
