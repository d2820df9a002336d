"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): images and videos on a Qwen2 decoder.

A single image is any-resolution (base crop plus an unpadded crop grid with a newline feature per grid
row), each of several images in one prompt is one base crop plus a newline, and a video is its frames'
features pooled 2x2 plus one newline. Images sit at ``image_token_id`` positions, videos at
``video_token_id``; FastV ranks them all as one pool per sample (arXiv 2403.06764).
"""

from __future__ import annotations

from ..video_llava.adapter import VideoLlavaAdapter


class LlavaOnevisionAdapter(VideoLlavaAdapter):
    """Decoder ``model.model.language_model`` (Qwen2); 1-D positions; visual: ``image_token_id`` and
    ``video_token_id``."""
