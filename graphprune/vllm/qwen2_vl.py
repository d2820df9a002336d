"""Qwen2-VL and Qwen2.5-VL in vLLM with FastV: mirrors ``graphprune/models/qwen2_vl.py``.

Positions are M-RoPE's ``[3, N]``; layers >= k get all three rows of the kept positions.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen2_5_vl import Qwen2_5_VLForConditionalGeneration
from vllm.model_executor.models.qwen2_vl import Qwen2VLForConditionalGeneration

from .config import method_of
from .gather import PrunedDecoder


def _pruned_decoder(model, vllm_config) -> PrunedDecoder:
    config = vllm_config.model_config.hf_config
    visual = (config.image_token_id, config.video_token_id)
    return PrunedDecoder(model.language_model.model, method_of(vllm_config), visual, vllm_config)


class FastVQwen2VL(Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL whose decoder runs FastV; visual: image and video tokens."""

    requires_raw_input_tokens = True

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.fastv = _pruned_decoder(self, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        with self.fastv.step(input_ids):
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)


class FastVQwen2_5_VL(Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL whose decoder runs FastV; visual: image and video tokens."""

    requires_raw_input_tokens = True

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.fastv = _pruned_decoder(self, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        with self.fastv.step(input_ids):
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
