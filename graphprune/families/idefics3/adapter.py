"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``): image
tiles on a Llama decoder.

An image is split into a grid of tiles plus a downscaled global image; each tile's patches are
pixel-shuffled into one block of features at ``image_token_id`` positions, and every block sits between
text tokens (``<fake_token_around_image>``, ``<row_r_col_c>``, newlines). FastV ranks all blocks as one
pool per sample (arXiv 2403.06764).
"""

from __future__ import annotations

from torch import nn

from ..llava.adapter import LlavaAdapter


class Idefics3Adapter(LlavaAdapter):
    """Decoder ``model.model.text_model`` (Llama); 1-D positions; visual: ``image_token_id``."""

    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model.text_model
