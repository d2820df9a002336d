"""Gemma 3's processor."""

from __future__ import annotations

from pathlib import Path

from ...tiny_checkpoints import CHAT_TEMPLATE, tokenizer

GEMMA3_TOKENS = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}


def save_gemma3_processor(config, path: str | Path) -> None:
    """Save the ``Gemma3Processor`` (PIL image processor: images resized to the tower's size, no pan-and-scan;
    ``mm_tokens_per_image`` tokens per image) that fits a ``Gemma3Config``; ``<start_of_image>`` and
    ``<end_of_image>`` are the config's ``boi_token_index`` and ``eoi_token_index``."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    side = config.vision_config.image_size
    words = tokenizer(
        config.text_config.vocab_size,
        image_token=GEMMA3_TOKENS["image_token"],
        named=GEMMA3_TOKENS,
        vision_bounds=(GEMMA3_TOKENS["boi_token"], GEMMA3_TOKENS["eoi_token"]),
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": side, "width": side})
    processor = Gemma3Processor(image_processor, words, CHAT_TEMPLATE, image_seq_length=config.mm_tokens_per_image)
    processor.save_pretrained(path)


__all__ = ["GEMMA3_TOKENS", "save_gemma3_processor"]
