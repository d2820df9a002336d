"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): any-resolution images on a Llama-family decoder.

Each image becomes a base crop plus a grid of crops, unpadded to its aspect ratio, with an
``image_newline`` feature after every grid row; all of them sit at ``image_token_id`` positions.
So the visual count differs per image, and the visual positions of a prompt with several images
are several spans. FastV ranks them all as one pool per sample (arXiv 2403.06764).
"""

from __future__ import annotations

from ..llava.adapter import LlavaAdapter


class LlavaNextAdapter(LlavaAdapter):
    """Decoder ``model.model.language_model``; 1-D positions; visual: ``image_token_id`` (newlines included)."""
