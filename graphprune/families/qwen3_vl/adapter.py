"""Qwen3-VL and Qwen3-VL-MoE (``Qwen3VLForConditionalGeneration``, ``Qwen3VLMoeForConditionalGeneration``).

As Qwen2-VL: M-RoPE positions ``[3, B, N]`` (interleaved over the head dim, which only the decoder's own
RoPE reads), image and video placeholder ids. DeepStack: the vision tower's intermediate features are
added to the outputs of the first ``len(deepstack_visual_indexes)`` decoder layers at the visual positions.
The captured prefill takes them as per-position inputs ``[B, N, d]`` (``DecoderLayout.deepstack_layers``),
so FastV gathers the ones that layers ``>= k`` read to the kept positions like any other sequence input.
"""

from __future__ import annotations

from torch import nn

from ...models.base import DecoderLayout, ModelAdapter, self_attention_layout
from ..qwen2_vl.adapter import MROPE_ROWS


class Qwen3VLAdapter(ModelAdapter):
    """Decoder ``model.model.language_model``; M-RoPE positions; DeepStack inputs; visual: image and video ids."""

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def layout(self, model: nn.Module) -> DecoderLayout:
        decoder = self.decoder(model)
        # HF adds feature i to layer i's output for the layers there are; a decoder shorter than the list skips the rest
        deepstack = min(len(model.config.vision_config.deepstack_visual_indexes), len(decoder.layers))
        return self_attention_layout(decoder, position_rows=MROPE_ROWS, deepstack_layers=deepstack)

    def visual_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return (model.config.image_token_id, model.config.video_token_id)
