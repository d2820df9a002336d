"""LLaVA-1.5 in vLLM (``LlavaForConditionalGeneration``) with FastV: mirrors the family's ``adapter.py``."""

from __future__ import annotations

from vllm.model_executor.models.llava import LlavaForConditionalGeneration

from ...vllm.model import FastVModel


class FastVLlava(FastVModel, LlavaForConditionalGeneration):
    """vLLM's LLaVA whose decoder (``language_model.model``) runs FastV; visual: ``image_token_index``."""

    visual_token_fields = ("image_token_index",)
