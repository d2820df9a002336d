"""LLaVA-OneVision in vLLM (``LlavaOnevisionForConditionalGeneration``) with FastV: mirrors
the family's ``adapter.py``.

Images (any-resolution crops and grid-row newlines) and videos (pooled frames and a newline) are ranked as one pool.
"""

from __future__ import annotations

from vllm.model_executor.models.llava_onevision import LlavaOnevisionForConditionalGeneration

from ...vllm.model import FastVModel


class FastVLlavaOnevision(FastVModel, LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision whose decoder (``language_model.model``, Qwen2) runs FastV; visual: image and video
    tokens."""

    visual_token_fields = ("image_token_index", "video_token_index")
