"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): any-resolution images on a Llama-family decoder.

Each image becomes a base crop plus a grid of crops, unpadded to its aspect ratio, with an
``image_newline`` feature after every grid row; all of them sit at ``image_token_id`` positions.
So the visual count differs per image, and the visual positions of a prompt with several images
are several spans. FastV ranks them all as one pool per sample (arXiv 2403.06764).
"""

from __future__ import annotations

from torch import nn

from ..methods import FastV
from .base import DecoderLayout, ModelAdapter, self_attention_layout


class LlavaNextAdapter(ModelAdapter):
    """Decoder ``model.model.language_model``; 1-D positions; visual: ``image_token_id`` (newlines included)."""

    name = "llava-next"
    model_classes = ("LlavaNextForConditionalGeneration",)
    methods = (FastV,)

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def layout(self, model: nn.Module) -> DecoderLayout:
        return self_attention_layout(self.decoder(model))

    def visual_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return (model.config.image_token_id,)
