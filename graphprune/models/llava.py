"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a Llama-family decoder behind a vision tower."""

from __future__ import annotations

import torch
from torch import nn

from ..methods import FastV
from .base import DecoderLayout, ModelAdapter


class LlavaAdapter(ModelAdapter):
    name = "llava"
    model_classes = ("LlavaForConditionalGeneration",)
    methods = (FastV,)

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def layout(self, model: nn.Module) -> DecoderLayout:
        decoder = self.decoder(model)
        text = decoder.config
        attention = decoder.layers[0].self_attn
        return DecoderLayout(
            layers="decoder.layers",
            attention="self_attn",
            query_proj="q_proj",
            key_proj="k_proj",
            num_layers=len(decoder.layers),
            num_heads=text.num_attention_heads,
            num_kv_heads=text.num_key_value_heads,
            head_dim=attention.head_dim,
            scaling=float(attention.scaling),
        )

    def visual_mask(self, model, input_ids, inputs_embeds):
        image_token_id = model.config.image_token_id
        if input_ids is not None:
            return input_ids == image_token_id
        if inputs_embeds is None:
            return None
        image_embedding = model.get_input_embeddings()(torch.tensor(image_token_id, device=inputs_embeds.device))
        return (inputs_embeds == image_embedding).all(dim=-1)
