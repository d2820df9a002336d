"""Small random-weight models of the real transformers classes, and inputs for them (tests, demo, benchmarks).

One module per family, as in ``graphprune.models``; what they share (the decoder's shape and build options,
:class:`TinyDecoder`; token ids, seeding, weight init, text ids, left padding) is in ``common``.
"""

from .common import (
    FIRST_TEXT_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    QWEN2_VL_TOKEN_IDS,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
    TinyDecoder,
    llama_text_config,
    text_config,
)
from .gemma3 import gemma3_inputs, tiny_gemma3
from .idefics3 import idefics3_inputs, tiny_idefics3
from .internvl import internvl_inputs, tiny_internvl
from .llava import image_tokens_per_image, llava_inputs, tiny_llava
from .llava_next import llava_next_inputs, tiny_llava_next
from .llava_onevision import llava_onevision_inputs, tiny_llava_onevision
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
    "TinyDecoder",
    "features_per_tile",
    "gemma3_inputs",
    "idefics3_inputs",
    "image_tokens_per_image",
    "internvl_inputs",
    "llama_text_config",
    "llava_inputs",
    "llava_next_inputs",
    "llava_onevision_inputs",
    "mllama_inputs",
    "qwen2_vl_inputs",
    "qwen3_vl_inputs",
    "text_config",
    "tiny_gemma3",
    "tiny_idefics3",
    "tiny_internvl",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_llava_onevision",
    "tiny_mllama",
    "tiny_qwen2_vl",
    "tiny_qwen3_vl",
    "tiny_video_llava",
    "video_llava_inputs",
]
