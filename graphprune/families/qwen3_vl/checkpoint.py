"""Qwen3-VL's and Qwen3-VL-MoE's checkpoint (MoE experts in the hub's layout) and processor."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ...tiny_checkpoints import CHAT_TEMPLATE, rewrite_keys, tokenizer


def save_qwen3_vl_processor(config, path: str | Path) -> None:
    """Save the image processor (PIL backend) and tokenizer of the ``Qwen3VLProcessor`` that fits a
    ``Qwen3VLConfig``: its patch, temporal patch and merge sizes; 1 to 64 merged patches per image."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = config.vision_config
    patch = vision.patch_size * vision.spatial_merge_size
    Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size,
        merge_size=vision.spatial_merge_size,
        size={"shortest_edge": patch * patch, "longest_edge": 64 * patch * patch},
    ).save_pretrained(path)
    tokenizer(config.text_config.vocab_size, "<|image_pad|>", "<|video_pad|>").save_pretrained(path)


def save_qwen3_vl(model: nn.Module, path: str | Path) -> Path:
    """Save a ``tiny_qwen3_vl`` model (dense or MoE: experts in the hub's layout) and its full ``Qwen3VLProcessor``
    (with its video processor, which needs torchvision: the vLLM venv has it) to ``path``; returns ``path``."""
    from transformers import AutoTokenizer, Qwen3VLProcessor, Qwen3VLVideoProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    if model.config.model_type == "qwen3_vl_moe":  # HF always renormalises the top-k weights; vLLM reads this key
        model.config.text_config.norm_topk_prob = True
    model.save_pretrained(path)
    if model.config.model_type == "qwen3_vl_moe":  # the hub's fused experts: [E, H, 2I] and [E, I, H]
        experts = ("experts.gate_up_proj", "experts.down_proj")
        rewrite_keys(path, str, lambda key, tensor: tensor.transpose(1, 2) if key.endswith(experts) else tensor)
    save_qwen3_vl_processor(model.config, path)
    vision = model.config.vision_config
    patch = vision.patch_size * vision.spatial_merge_size
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": patch * patch, "longest_edge": 64 * patch * patch},
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
        ),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(path)
    return path


__all__ = ["save_qwen3_vl", "save_qwen3_vl_processor"]
