"""Idefics3's and SmolVLM's checkpoint and processor."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...tiny_checkpoints import CHAT_TEMPLATE, tokenizer

# Idefics3's processor reads these tokenizer attributes (or these default names)
IDEFICS3_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}


def idefics3_image_seq_len(config) -> int:
    """Features per tile of an Idefics3 / SmolVLM config: the tile's patches, pixel-shuffled by ``scale_factor``."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor**2


def save_idefics3(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_idefics3`` model and its processor to ``path``: ``Idefics3Processor``, or for SmolVLM the full
    ``SmolVLMProcessor`` (its video processor needs torchvision, the processor num2words); returns ``path``."""
    path = Path(path)
    model.save_pretrained(path)
    save_idefics3_processor(model.config, path)
    if model.config.model_type == "smolvlm":
        from transformers import AutoTokenizer, SmolVLMProcessor, SmolVLMVideoProcessor
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

        processor = SmolVLMProcessor(
            image_processor=SmolVLMImageProcessorPil.from_pretrained(path),
            tokenizer=AutoTokenizer.from_pretrained(path),
            video_processor=SmolVLMVideoProcessor(),
            image_seq_len=idefics3_image_seq_len(model.config),
            chat_template=CHAT_TEMPLATE,
        )
        processor.save_pretrained(path)
    return path


def save_idefics3_processor(config, path: str | Path) -> None:
    """Save the processor that fits an ``Idefics3Config`` (tiles of the tower's image size, images resized to a
    longest edge of two tiles); for a ``SmolVLMConfig`` only its image processor and tokenizer (transformers
    cannot build ``SmolVLMProcessor`` without torchvision and num2words). PIL backend."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    side = config.vision_config.image_size
    sizes = dict(max_image_size={"longest_edge": side}, size={"longest_edge": 2 * side})
    words = tokenizer(config.text_config.vocab_size, named=IDEFICS3_TOKENS)
    if config.model_type == "smolvlm":
        SmolVLMImageProcessorPil(**sizes).save_pretrained(path)
        words.save_pretrained(path)
        return
    image_processor = Idefics3ImageProcessorPil(**sizes)
    processor = Idefics3Processor(image_processor, words, idefics3_image_seq_len(config), chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(path)


__all__ = ["IDEFICS3_TOKENS", "idefics3_image_seq_len", "save_idefics3", "save_idefics3_processor"]
