"""Qwen3-VL and Qwen3-VL-MoE in vLLM with FastV: mirrors the family's ``adapter.py``.

Positions are interleaved M-RoPE's ``[3, N]`` (every row is gathered, as for Qwen2-VL). DeepStack adds one
vision-tower level per row to the outputs of the first decoder layers; the levels added after a layer >= k that runs
on the kept rows are gathered to those rows (``KeptRowsDeepstack``), as the HF path adds them at the kept positions.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration
from vllm.model_executor.models.qwen3_vl_moe import Qwen3VLMoeForConditionalGeneration
from vllm.sequence import IntermediateTensors

from ...vllm.gather import PrunedDecoder
from ...vllm.model import FastVModel


class KeptRowsDeepstack(IntermediateTensors):
    """vLLM's DeepStack levels (``deepstack_input_embeds_{layer}``), each read after its layer's forward: on the kept
    rows for the layers ``k .. n-2`` of a pruned step (the last layer's output is scattered back to every row)."""

    def __init__(self, tensors, fastv: PrunedDecoder) -> None:
        super().__init__(tensors)
        self.fastv = fastv

    def __getitem__(self, key):
        value = super().__getitem__(key)
        plan = self.fastv.plan
        if plan is None or not isinstance(key, str):
            return value
        layer = int(key.rsplit("_", 1)[1])
        return value[plan.index] if self.fastv.method.k <= layer < len(self.fastv.layers) - 1 else value


class PrunedDeepstack:
    """Mixin before ``FastVModel``: vLLM's DeepStack levels handed to the decoder as ``KeptRowsDeepstack``."""

    def _get_deepstack_input_embeds(self, num_tokens: int) -> IntermediateTensors | None:
        levels = super()._get_deepstack_input_embeds(num_tokens)
        return None if levels is None else KeptRowsDeepstack(levels.tensors, self.fastv)


class FastVQwen3VL(PrunedDeepstack, FastVModel, Qwen3VLForConditionalGeneration):
    """vLLM's Qwen3-VL whose decoder runs FastV; visual: image and video tokens."""

    visual_token_fields = ("image_token_id", "video_token_id")


class FastVQwen3VLMoe(PrunedDeepstack, FastVModel, Qwen3VLMoeForConditionalGeneration):
    """vLLM's Qwen3-VL-MoE whose decoder runs FastV; visual: image and video tokens."""

    visual_token_fields = ("image_token_id", "video_token_id")
