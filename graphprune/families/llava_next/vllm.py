"""LLaVA-NeXT in vLLM (``LlavaNextForConditionalGeneration``) with FastV: mirrors the family's ``adapter.py``.

Every token of an image's any-resolution packing (base crop, grid, row newlines) is an image token and is ranked.
"""

from __future__ import annotations

from vllm.model_executor.models.llava_next import LlavaNextForConditionalGeneration

from ...vllm.model import FastVModel


class FastVLlavaNext(FastVModel, LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT whose decoder (``language_model.model``) runs FastV; visual: ``image_token_index``."""

    visual_token_fields = ("image_token_index",)
