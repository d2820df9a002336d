"""Tiny Video-LLaVA (``VideoLlavaForConditionalGeneration``, images and videos) and its inputs."""

from __future__ import annotations

import torch
from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

from ...methods import FastV
from ...testing.common import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, left_padded, sample_generators, text_ids
from ...testing.contract import ContractCase
from ..llava.testing import llava_family


def tiny_video_llava(*, image_size: int = 16, patch_size: int = 4, **decoder) -> VideoLlavaForConditionalGeneration:
    """A ``VideoLlavaForConditionalGeneration`` (Llama decoder of ``decoder``: :class:`TinyDecoder`'s keywords; CLIP
    image and video towers): an image gives ``(image_size / patch_size)²`` tokens, a video that plus one (CLS) per
    frame; in eval mode."""
    model_class = VideoLlavaForConditionalGeneration
    return llava_family(VideoLlavaConfig, model_class, image_size, patch_size, decoder, video_token_id=VIDEO_TOKEN_ID)


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


# 16 + 136 | 136 (video only) | 16 (image only)
CONTRACT = {
    "VideoLlavaForConditionalGeneration": ContractCase(
        tiny_video_llava,
        video_llava_inputs,
        [(3, 1, 1, 4), (2, 0, 1, 3), (5, 1, 0, 2)],
        [(4, 0, 0, 3), (6, 0, 0, 2)],
        (FastV(k=2, keep=0.5), FastV(k=1, keep=0.25, query="mean")),
        (FastV(k=2, keep=0.5),),
    ),
}

__all__ = ["tiny_video_llava", "video_llava_inputs"]
