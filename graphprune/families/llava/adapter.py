"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a Llama-family decoder behind a vision tower."""

from __future__ import annotations

from torch import nn

from ...models.base import DecoderLayout, ModelAdapter, self_attention_layout


class LlavaAdapter(ModelAdapter):
    """Decoder ``model.model.language_model``; 1-D positions; visual: ``image_token_id``."""

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def layout(self, model: nn.Module) -> DecoderLayout:
        return self_attention_layout(self.decoder(model))

    def visual_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return (model.config.image_token_id,)
