"""LLaVA-1.5's hub-layout checkpoint (the vision tower under ``vision_tower.vision_model``) and ``LlavaProcessor``."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...tiny_checkpoints import CHAT_TEMPLATE, clip_hub_key, rewrite_keys, tokenizer


def save_llava(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_llava`` model and its ``LlavaProcessor`` to ``path`` in the hub layout; returns ``path``."""
    path = Path(path)
    model.save_pretrained(path)
    rewrite_keys(path, clip_hub_key)
    save_llava_processor(model.config, path)
    return path


def save_llava_processor(config, path: str | Path) -> None:
    """Save the ``LlavaProcessor`` (CLIP image processor, WordLevel tokenizer) that fits a ``LlavaConfig``."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    vision = config.vision_config
    size = vision.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer(config.text_config.vocab_size),
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)


__all__ = ["save_llava", "save_llava_processor"]
