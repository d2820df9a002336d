"""Tiny LLaVA-NeXT (``LlavaNextForConditionalGeneration``, any-resolution images) and its inputs."""

from __future__ import annotations

import torch
from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

from ...methods import FastV
from ...testing.common import IMAGE_TOKEN_ID, grid_pinpoints, left_padded, sample_generators, text_ids
from ...testing.contract import ContractCase
from ..llava.testing import llava_family


def tiny_llava_next(*, image_size: int = 16, patch_size: int = 4, **decoder) -> LlavaNextForConditionalGeneration:
    """A ``LlavaNextForConditionalGeneration`` (Llama decoder of ``decoder``: :class:`TinyDecoder`'s keywords; CLIP
    tower of ``(image_size / patch_size)²`` patches per crop) whose any-resolution grids are 1x2, 2x1 and 2x2 crops;
    in eval mode."""
    model_class, pinpoints = LlavaNextForConditionalGeneration, grid_pinpoints(image_size)
    return llava_family(LlavaNextConfig, model_class, image_size, patch_size, decoder, image_grid_pinpoints=pinpoints)


@torch.no_grad()
def llava_next_inputs(
    model: LlavaNextForConditionalGeneration, samples: list[tuple[int, list[tuple[int, int]], int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, image sizes (height, width) in pixels, text_after)``.

    An image's token count is what LLaVA-NeXT's any-resolution packing gives for its size (base crop,
    unpadded grid, one newline per grid row), counted by the model's own ``get_image_features``.
    Images of a sample are separated by one text token; ``pixel_values`` is ``[images, crops, 3, H, W]``
    (zero crops pad images with fewer).
    """
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    config = model.config
    vocab, side = config.text_config.vocab_size, config.vision_config.image_size
    texts, crops = [], []
    for (before, sizes, after), generator in sample_generators(samples, seed):
        texts.append([text_ids(generator, vocab, count) for count in (before, len(sizes), after)])
        for size in sizes:
            count = image_size_to_num_patches(size, config.image_grid_pinpoints, side)
            crops.append(torch.randn((count, 3, side, side), generator=generator).to(model.dtype))
    sizes = [size for _, image_sizes, _ in samples for size in image_sizes]
    inputs = {}
    if sizes:
        pixel_values = torch.zeros((len(crops), max(len(c) for c in crops), 3, side, side), dtype=model.dtype)
        for image, image_crops in enumerate(crops):
            pixel_values[image, : len(image_crops)] = image_crops
        inputs = {"pixel_values": pixel_values, "image_sizes": torch.tensor(sizes)}
        features = model.model.get_image_features(**inputs).pooler_output
        counts = iter([len(feature) for feature in features])
    rows = []
    for (before, separators, after), (_, image_sizes, _) in zip(texts, samples, strict=True):
        row = list(before)
        for index in range(len(image_sizes)):
            row += [IMAGE_TOKEN_ID] * next(counts) + separators[index : index + 1] * (index < len(image_sizes) - 1)
        rows.append(row + after)
    return {**left_padded(rows), **inputs}


# 52 | 88 + 46 (two images, two spans) | 0 visual tokens
CONTRACT = {
    "LlavaNextForConditionalGeneration": ContractCase(
        tiny_llava_next,
        llava_next_inputs,
        [(3, [(16, 32)], 4), (2, [(32, 32), (20, 12)], 3), (5, [], 2)],
        [(4, [], 3), (6, [], 2)],
        (FastV(k=2, keep=0.5), FastV(k=1, keep=0.25, query="mean")),
        (FastV(k=2, keep=0.5),),
    ),
}

__all__ = ["llava_next_inputs", "tiny_llava_next"]
