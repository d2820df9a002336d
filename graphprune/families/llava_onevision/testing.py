"""Tiny LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``: any-resolution images, several images per
prompt, pooled videos) and its inputs."""

from __future__ import annotations

import math

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from ...methods import FastV
from ...testing.common import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    VIDEO_TOKEN_ID,
    TinyDecoder,
    grid_pinpoints,
    left_padded,
    sample_generators,
    text_config,
    text_ids,
    vision_tower,
)
from ...testing.contract import ContractCase


def tiny_llava_onevision(
    *, image_size: int = 16, patch_size: int = 4, **decoder
) -> LlavaOnevisionForConditionalGeneration:
    """A ``LlavaOnevisionForConditionalGeneration`` (Qwen2 decoder of ``decoder``: :class:`TinyDecoder`'s keywords;
    two-layer SigLIP tower of ``(image_size / patch_size)²`` patches per crop) whose any-resolution grids are 1x2,
    2x1 and 2x2 crops; in eval mode."""
    tiny = TinyDecoder.of(decoder)
    config = LlavaOnevisionConfig(
        text_config=text_config(*tiny.shape, model_type="qwen2", max_position_embeddings=4096),
        vision_config=vision_tower(image_size, patch_size, model_type="siglip_vision_model"),
        image_grid_pinpoints=grid_pinpoints(image_size),
        image_token_index=IMAGE_TOKEN_ID,
        video_token_index=VIDEO_TOKEN_ID,
        vision_feature_layer=-1,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=tiny.vocab_size,
    )
    return tiny.build(LlavaOnevisionForConditionalGeneration, config)


@torch.no_grad()
def llava_onevision_inputs(
    model: LlavaOnevisionForConditionalGeneration,
    samples: list[tuple[int, list[tuple[int, int]], int, int]],
    frames: int = 4,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, image sizes (height, width) in pixels, n_videos,
    text_after)``.

    Images come first, then videos, each followed by one text token. A sample's only image is any-resolution,
    each of several is one crop (``batch_num_images``), as the model's own ``get_image_features`` counts them
    (run on the model's device; the inputs stay on the CPU);
    a video of ``frames`` frames gives ``frames x`` the pooled patches plus one newline. ``pixel_values`` is
    ``[images, crops, 3, H, W]`` (zero crops pad images with fewer), ``pixel_values_videos``
    ``[videos, frames, 3, H, W]``, in sample order.
    """
    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    config = model.config
    vocab, side = config.text_config.vocab_size, config.vision_config.image_size
    pooled = math.ceil(side // config.vision_config.patch_size / 2) ** 2
    rows, crops, videos = [], [], []
    for (before, sizes, n_videos, after), generator in sample_generators(samples, seed):
        rows.append([text_ids(generator, vocab, before), text_ids(generator, vocab, len(sizes) + n_videos)])
        rows[-1].append(text_ids(generator, vocab, after))
        for size in sizes:
            count = image_size_to_num_patches(size, config.image_grid_pinpoints, side) if len(sizes) == 1 else 1
            crops.append(torch.randn((count, 3, side, side), generator=generator).to(model.dtype))
        videos += [torch.randn((frames, 3, side, side), generator=generator) for _ in range(n_videos)]
    inputs = {}
    if crops:
        pixel_values = torch.zeros((len(crops), max(len(c) for c in crops), 3, side, side), dtype=model.dtype)
        for image, image_crops in enumerate(crops):
            pixel_values[image, : len(image_crops)] = image_crops
        sizes = torch.tensor([size for _, image_sizes, _, _ in samples for size in image_sizes])
        batch_num_images = torch.tensor([len(image_sizes) for _, image_sizes, _, _ in samples])
        inputs = {"pixel_values": pixel_values, "image_sizes": sizes, "batch_num_images": batch_num_images}
        features = model.model.get_image_features(**{k: v.to(model.device) for k, v in inputs.items()}).pooler_output
        counts = iter([len(feature) for feature in features])
    if videos:
        inputs["pixel_values_videos"] = torch.stack(videos).to(model.dtype)
    video_tokens = frames * pooled + 1
    prompts = []
    for (before, separators, after), (_, image_sizes, n_videos, _) in zip(rows, samples, strict=True):
        row = list(before)
        tokens = [(IMAGE_TOKEN_ID, next(counts)) for _ in image_sizes] + [(VIDEO_TOKEN_ID, video_tokens)] * n_videos
        for (token, count), separator in zip(tokens, separators, strict=True):
            row += [token] * count + [separator]
        prompts.append(row + after)
    return {**left_padded(prompts), **inputs}


# 52 (any-resolution) | 17 + 17 (two one-crop images) + 17 (video) | 17 (video only): Qwen2 decoder
CONTRACT = {
    "LlavaOnevisionForConditionalGeneration": ContractCase(
        tiny_llava_onevision,
        llava_onevision_inputs,
        [(3, [(16, 32)], 0, 4), (2, [(32, 32), (20, 12)], 1, 3), (5, [], 1, 2)],
        [(4, [], 0, 3), (6, [], 0, 2)],
        (FastV(k=2, keep=0.5), FastV(k=1, keep=0.25, query="mean")),
        (FastV(k=2, keep=0.5),),
    ),
}

__all__ = ["llava_onevision_inputs", "tiny_llava_onevision"]
