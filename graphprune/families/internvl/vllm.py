"""InternVL (transformers' ``InternVLForConditionalGeneration``, InternVL3 ``-hf`` checkpoints) in vLLM with FastV:
mirrors the family's ``adapter.py``.

vLLM serves this architecture with its ``InternS1ForConditionalGeneration``. Its processor puts image features at
``<IMG_CONTEXT>`` (``image_token_id``) and video features at the processor's ``<video>`` token, where HF's puts
both at ``<IMG_CONTEXT>``: both ids are ranked, so every feature is, as on the HF path.
"""

from __future__ import annotations

from vllm.model_executor.models.interns1 import InternS1ForConditionalGeneration

from ...vllm.model import FastVModel


class FastVInternVL(FastVModel, InternS1ForConditionalGeneration):
    """vLLM's InternVL whose decoder (``language_model.model``, Qwen2) runs FastV; visual: ``image_token_id`` and
    the tokenizer's video token."""

    visual_token_fields = ("image_token_id",)

    def visual_token_ids(self, vllm_config) -> tuple[int, ...]:
        from vllm.tokenizers import cached_tokenizer_from_config

        tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
        video = tokenizer.encode(tokenizer.video_token, add_special_tokens=False)  # as vLLM's processor encodes it
        return (*super().visual_token_ids(vllm_config), *video)
