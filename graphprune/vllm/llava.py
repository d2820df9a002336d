"""LLaVA-1.5 in vLLM (``LlavaForConditionalGeneration``) with FastV: mirrors ``graphprune/models/llava.py``."""

from __future__ import annotations

from vllm.model_executor.models.llava import LlavaForConditionalGeneration

from .config import method_of
from .gather import PrunedDecoder


class FastVLlava(LlavaForConditionalGeneration):
    """vLLM's LLaVA whose decoder (``language_model.model``) runs FastV; visual: ``image_token_index``."""

    requires_raw_input_tokens = True  # the runner passes input_ids beside the merged embeddings: visual positions

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        visual = (vllm_config.model_config.hf_config.image_token_index,)
        self.fastv = PrunedDecoder(self.language_model.model, method_of(vllm_config), visual, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        with self.fastv.step(input_ids):
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
