"""Qwen2-VL's and Qwen2.5-VL's checkpoint and processor."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...tiny_checkpoints import CHAT_TEMPLATE, tokenizer


def save_qwen2_vl(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_qwen2_vl`` model (either version) and its processor to ``path``; returns ``path``."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    path = Path(path)
    model.save_pretrained(path)
    vision = model.config.vision_config
    patch = vision.patch_size * vision.spatial_merge_size
    sizes = dict(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        min_pixels=patch * patch,
        max_pixels=64 * patch * patch,
    )
    vocab = model.config.text_config.vocab_size
    processor_class = Qwen2_5_VLProcessor if model.config.model_type == "qwen2_5_vl" else Qwen2VLProcessor
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(**sizes),
        video_processor=Qwen2VLVideoProcessor(**sizes),
        tokenizer=tokenizer(vocab, image_token="<|image_pad|>", video_token="<|video_pad|>"),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


__all__ = ["save_qwen2_vl"]
