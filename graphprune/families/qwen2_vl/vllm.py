"""Qwen2-VL and Qwen2.5-VL in vLLM with FastV: mirrors the family's ``adapter.py``.

Positions are M-RoPE's ``[3, N]``; layers >= k get all three rows of the kept positions.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration

from ...vllm.model import FastVModel


class FastVQwen2VL(FastVModel, Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL whose decoder runs FastV; visual: image and video tokens."""

    visual_token_fields = ("image_token_id", "video_token_id")


class FastVQwen2_5_VL(FastVModel, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL whose decoder runs FastV; visual: image and video tokens."""

    visual_token_fields = ("image_token_id", "video_token_id")
