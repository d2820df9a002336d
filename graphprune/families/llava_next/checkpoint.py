"""LLaVA-NeXT's hub-layout checkpoint and ``LlavaNextProcessor``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...tiny_checkpoints import CHAT_TEMPLATE, clip_hub_key, rewrite_keys, tokenizer


def save_llava_next(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_llava_next`` model and its ``LlavaNextProcessor`` to ``path`` in the hub layout."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    path = Path(path)
    model.save_pretrained(path)
    rewrite_keys(path, clip_hub_key)
    config, size = model.config, model.config.vision_config.image_size
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=config.image_grid_pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer(config.text_config.vocab_size),
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


__all__ = ["save_llava_next"]
