"""Small random-weight models of the real transformers classes, and inputs for them (tests, demo, benchmarks).

One module per family, as in ``graphprune.models``; what they share (token ids, seeding, weight init,
text ids, left padding) is in ``common``.
"""

from .common import (
    FIRST_TEXT_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    QWEN2_VL_TOKEN_IDS,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
    llama_text_config,
    text_config,
)
from .llava import image_tokens_per_image, llava_inputs, tiny_llava
from .llava_next import llava_next_inputs, tiny_llava_next
from .mllama import features_per_tile, mllama_inputs, tiny_mllama
from .qwen2_vl import qwen2_vl_inputs, tiny_qwen2_vl
from .qwen3_vl import qwen3_vl_inputs, tiny_qwen3_vl
from .video_llava import tiny_video_llava, video_llava_inputs

__all__ = [
    "FIRST_TEXT_ID",
    "IMAGE_TOKEN_ID",
    "PAD_TOKEN_ID",
    "QWEN2_VL_TOKEN_IDS",
    "VIDEO_TOKEN_ID",
    "VISION_END_TOKEN_ID",
    "VISION_START_TOKEN_ID",
    "features_per_tile",
    "image_tokens_per_image",
    "llama_text_config",
    "llava_inputs",
    "llava_next_inputs",
    "mllama_inputs",
    "qwen2_vl_inputs",
    "qwen3_vl_inputs",
    "text_config",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_mllama",
    "tiny_qwen2_vl",
    "tiny_qwen3_vl",
    "tiny_video_llava",
    "video_llava_inputs",
]
