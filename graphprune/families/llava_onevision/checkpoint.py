"""LLaVA-OneVision's hub-layout checkpoint and processor."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...tiny_checkpoints import CHAT_TEMPLATE, clip_hub_key, rewrite_keys, tokenizer


def save_llava_onevision(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_llava_onevision`` model and its full ``LlavaOnevisionProcessor`` (with its video processor,
    which needs torchvision: the vLLM venv has it) to ``path`` in the hub layout; returns ``path``."""
    from transformers import LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    path = Path(path)
    model.save_pretrained(path)
    rewrite_keys(path, clip_hub_key)
    config, side = model.config, model.config.vision_config.image_size
    size = {"height": side, "width": side}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=config.image_grid_pinpoints),
        tokenizer=tokenizer(config.text_config.vocab_size),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        num_image_tokens=(side // config.vision_config.patch_size) ** 2,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_aspect_ratio=config.vision_aspect_ratio,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


def save_llava_onevision_processor(config, path: str | Path) -> None:
    """Save the image processor (PIL backend) and tokenizer of the ``LlavaOnevisionProcessor`` that fits a
    ``LlavaOnevisionConfig``: one crop is the tower's image size, the any-resolution grids are the config's."""
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    side = config.vision_config.image_size
    size = {"height": side, "width": side}
    LlavaOnevisionImageProcessorPil(size=size, image_grid_pinpoints=config.image_grid_pinpoints).save_pretrained(path)
    tokenizer(config.text_config.vocab_size).save_pretrained(path)


__all__ = ["save_llava_onevision", "save_llava_onevision_processor"]
