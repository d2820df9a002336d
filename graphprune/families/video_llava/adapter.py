"""Video-LLaVA (``VideoLlavaForConditionalGeneration``): images and videos on a Llama-family decoder.

A video contributes ``frames x (patches + 1)`` features at ``video_token_id`` positions, an image
its patches at ``image_token_id`` positions; FastV's Video-LLaVA experiments (arXiv 2403.06764)
rank both kinds of visual token together.
"""

from __future__ import annotations

from torch import nn

from ..llava.adapter import LlavaAdapter


class VideoLlavaAdapter(LlavaAdapter):
    """Decoder ``model.model.language_model``; 1-D positions; visual: ``image_token_id`` and ``video_token_id``."""

    def visual_token_ids(self, model: nn.Module) -> tuple[int, ...]:
        return (model.config.image_token_id, model.config.video_token_id)
