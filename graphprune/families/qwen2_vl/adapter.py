"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

The decoder uses M-RoPE: position ids ``[3, B, N]``, one row each for time, height and width.
Text tokens have three equal rows; an image or video has its grid coordinates, so positions jump
by less than the visual count and new tokens continue from ``rope_deltas``, not from N. FastV keeps
every row of a kept token's position (the gathered RoPE cos/sin are built from all three). HF
``generate`` prepends a fourth, text-only row (``[4, B, N]``), which the decoder reads only to detect
packed sequences when there is no attention mask; the captured graph takes the three M-RoPE rows.
"""

from __future__ import annotations

from torch import nn

from ...models.base import DecoderLayout, ModelAdapter, self_attention_layout

MROPE_ROWS = 3


class Qwen2VLAdapter(ModelAdapter):
    """Decoder ``model.model.language_model``; M-RoPE positions ``[3, B, N]``; visual: image and video ids."""

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def layout(self, model: nn.Module) -> DecoderLayout:
        return self_attention_layout(self.decoder(model), position_rows=MROPE_ROWS)

    def visual_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return (model.config.image_token_id, model.config.video_token_id)
