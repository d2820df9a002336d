"""Idefics3 and SmolVLM in vLLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``) with
FastV: mirrors the family's ``adapter.py``.

Every tile's pixel-shuffled features (the grid's tiles and the global tile) sit at ``image_token_id`` and are ranked
as one pool; the tokens around them (``<fake_token_around_image>``, ``<row_r_col_c>``) are text.
"""

from __future__ import annotations

from vllm.model_executor.models.idefics3 import Idefics3ForConditionalGeneration
from vllm.model_executor.models.smolvlm import SmolVLMForConditionalGeneration

from ...vllm.model import FastVModel


class FastVIdefics3(FastVModel, Idefics3ForConditionalGeneration):
    """vLLM's Idefics3 whose decoder (``model.text_model``, Llama) runs FastV; visual: ``image_token_id``."""

    visual_token_fields = ("image_token_id",)
    decoder_path = "model.text_model"


class FastVSmolVLM(FastVModel, SmolVLMForConditionalGeneration):
    """vLLM's SmolVLM (Idefics3's model, SmolVLM's processor) whose decoder (``model.text_model``) runs FastV."""

    visual_token_fields = ("image_token_id",)
    decoder_path = "model.text_model"
