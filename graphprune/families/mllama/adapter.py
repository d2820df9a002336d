"""LLaMA-3.2-Vision (``MllamaForConditionalGeneration``): a Llama decoder with interleaved cross-attention
layers that read the vision features (``cross_attention_states``) instead of visual tokens."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ...models.base import DecoderLayout, ModelAdapter, self_attention_layout


class MllamaAdapter(ModelAdapter):
    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def layout(self, model: nn.Module) -> DecoderLayout:
        decoder = self.decoder(model)
        cross_layers = tuple(sorted(decoder.config.cross_attention_layers))
        first_self = next(i for i in range(len(decoder.layers)) if i not in cross_layers)
        return replace(
            self_attention_layout(decoder, attention_layer=first_self),
            scaling=float(decoder.layers[cross_layers[0]].cross_attn.scaling),
            cross_attention_layers=cross_layers,
            cross_attention="cross_attn",
        )

    def feature_grid(self, model: nn.Module) -> tuple[int, int]:
        """``(tiles per image, features per tile)``: how a sample's feature rows split by image and tile."""
        return model.config.vision_config.max_num_tiles, model.model.vision_model.num_patches

    def visual_mask(self, model, input_ids, inputs_embeds):
        return None  # the visual features reach the decoder as cross_attention_states, not as tokens
