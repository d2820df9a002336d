"""InternVL3's (``-hf``) checkpoint and processor."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...tiny_checkpoints import CHAT_TEMPLATE, tokenizer

# InternVL's processor reads these tokenizer attributes (or these default names)
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def save_internvl_processor(config, path: str | Path) -> None:
    """Save the image processor (GOT-OCR2's, PIL backend) and tokenizer of the ``InternVLProcessor`` that fits an
    ``InternVLConfig``: tiles of the tower's image size, 1 to 6 tiles (and a thumbnail) per image."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    side = config.vision_config.image_size[0]
    size = {"height": side, "width": side}
    GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1, max_patches=6).save_pretrained(path)
    tokenizer(config.text_config.vocab_size, "<IMG_CONTEXT>", named=INTERNVL_TOKENS).save_pretrained(path)


def save_internvl(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_internvl`` model and its full ``InternVLProcessor`` (with its video processor, which needs
    torchvision: the vLLM venv has it) to ``path``; returns ``path``."""
    from transformers import InternVLProcessor, InternVLVideoProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    path = Path(path)
    model.save_pretrained(path)
    config, vision = model.config, model.config.vision_config
    size = {"height": vision.image_size[0], "width": vision.image_size[1]}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessorPil(size=size, crop_to_patches=True, min_patches=1, max_patches=6),
        tokenizer=tokenizer(config.text_config.vocab_size, "<IMG_CONTEXT>", named=INTERNVL_TOKENS),
        video_processor=InternVLVideoProcessor(size=size),
        image_seq_length=int((vision.image_size[0] // vision.patch_size[0] * config.downsample_ratio) ** 2),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


__all__ = ["INTERNVL_TOKENS", "save_internvl", "save_internvl_processor"]
