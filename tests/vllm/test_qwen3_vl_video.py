"""FastV in vLLM on Qwen3-VL videos: greedy tokens equal graphprune's HF path (video tokens ranked with the images').

Qwen3-VL's prompt holds one ``<t seconds>`` timestamp per frame group, computed from the video's metadata: both
paths get the same metadata (2 fps, every frame, no resampling), so both build the same prompt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import AutoProcessor, Qwen3VLForConditionalGeneration
from transformers.video_utils import VideoMetadata

import graphprune as gp
from graphprune.testing import tiny_qwen3_vl
from graphprune.tiny_checkpoints import random_image, save_qwen3_vl

from .helpers import MAX_NEW_TOKENS, close, hf_tokens, make_llm, vllm_tokens

METHOD = gp.FastV(k=2, keep=0.5)
FRAMES = np.asarray([random_image(5 + i, 16) for i in range(4)])  # 2 frame groups (temporal patch 2) of 16 tokens
METADATA = dict(fps=2.0, duration=2.0, total_num_frames=4, frames_indices=[0, 1, 2, 3])
VIDEO_PROMPT = "w70 <|vision_start|><|video_pad|><|vision_end|> w71 w72"
IMAGE_REQUEST = ("w9 w10 <|vision_start|><|image_pad|><|vision_end|> w11", [random_image(0, 16)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model = tiny_qwen3_vl(hidden_size=128, intermediate_size=192, num_heads=4, num_kv_heads=2, mrope_section=(6, 5, 5))
    return save_qwen3_vl(model, tmp_path_factory.mktemp("qwen3_vl"))


@torch.no_grad()
def hf_video_tokens(path, method: gp.FastV | None) -> list[int]:
    """The HF path on the video prompt, with the metadata vLLM gets."""
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    if method is not None:
        gp.optimize(model, method)
    inputs = processor(
        text=VIDEO_PROMPT,
        videos=[FRAMES],
        video_metadata=[VideoMetadata(**METADATA)],
        do_sample_frames=False,
        return_tensors="pt",
    )
    out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def test_video_tokens_equal_hf_path(checkpoint):
    expected = hf_video_tokens(checkpoint, METHOD)
    assert expected != hf_video_tokens(checkpoint, None)  # pruning changes the video request's tokens
    graphprune = {"method": "fastv", "k": METHOD.k, "keep": METHOD.keep}
    llm = make_llm(checkpoint, graphprune, limit_mm_per_prompt={"image": 1, "video": 1})
    try:
        video = (FRAMES, {**METADATA, "do_sample_frames": False})
        tokens = vllm_tokens(llm, [(VIDEO_PROMPT, [], [video]), IMAGE_REQUEST])  # a video beside an image request
    finally:
        close(llm)
    assert tokens == [expected, *hf_tokens(Qwen3VLForConditionalGeneration, checkpoint, METHOD, [IMAGE_REQUEST])]
