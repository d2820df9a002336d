"""InternVL (``InternVLForConditionalGeneration``, InternVL3): image tiles on a Qwen2 decoder.

An image is split into tiles (plus a thumbnail); each tile's patches are pixel-shuffled into one block
of features at ``image_token_id`` positions, the blocks of an image back to back between text tokens.
FastV ranks every tile's features as one pool per sample (arXiv 2403.06764).
"""

from __future__ import annotations

from ..llava.adapter import LlavaAdapter


class InternVLAdapter(LlavaAdapter):
    """Decoder ``model.model.language_model`` (Qwen2); 1-D positions; visual: ``image_token_id``."""
