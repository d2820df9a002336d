"""Tiny Video-LLaVA (``VideoLlavaForConditionalGeneration``, images and videos) and its inputs."""

from __future__ import annotations

import torch
from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

from .common import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    VIDEO_TOKEN_ID,
    build,
    clip_config,
    finish,
    left_padded,
    llama_text_config,
    sample_generators,
    text_ids,
)


def tiny_video_llava(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    image_size: int = 16,
    patch_size: int = 4,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    qk_gain: float = 2.0,
) -> VideoLlavaForConditionalGeneration:
    """A ``VideoLlavaForConditionalGeneration`` (Llama decoder, CLIP image and video towers): an image
    gives ``(image_size / patch_size)²`` tokens, a video that plus one (CLS) per frame; in eval mode."""
    config = VideoLlavaConfig(
        text_config=llama_text_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size),
        vision_config=clip_config(image_size, patch_size),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=vocab_size,
    )
    return finish(build(VideoLlavaForConditionalGeneration, config, seed), seed, qk_gain, attn_implementation, dtype)


def video_llava_inputs(
    model: VideoLlavaForConditionalGeneration,
    samples: list[tuple[int, int, int, int]],
    frames: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, n_images, n_videos, text_after)``.

    Images come first, then videos, each followed by one text token. ``pixel_values_images`` is
    ``[images, 3, H, W]``, ``pixel_values_videos`` ``[videos, frames, 3, H, W]``, in sample order.
    """
    vision = model.config.vision_config
    vocab, side = model.config.text_config.vocab_size, vision.image_size
    patches = (side // vision.patch_size) ** 2
    rows, images, videos = [], [], []
    for (before, n_images, n_videos, after), generator in sample_generators(samples, seed):
        row = text_ids(generator, vocab, before)
        for token, count in [(IMAGE_TOKEN_ID, patches)] * n_images + [
            (VIDEO_TOKEN_ID, frames * (patches + 1))
        ] * n_videos:
            row += [token] * count + text_ids(generator, vocab, 1)
        rows.append(row + text_ids(generator, vocab, after))
        images += [torch.randn((3, side, side), generator=generator) for _ in range(n_images)]
        videos += [torch.randn((frames, 3, side, side), generator=generator) for _ in range(n_videos)]
    inputs = left_padded(rows)
    if images:
        inputs["pixel_values_images"] = torch.stack(images).to(model.dtype)
    if videos:
        inputs["pixel_values_videos"] = torch.stack(videos).to(model.dtype)
    return inputs
