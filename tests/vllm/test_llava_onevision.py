"""FastV in vLLM on LLaVA-OneVision (any-resolution single images, one crop each of several, pooled videos): greedy
tokens equal graphprune's HF path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import LlavaOnevisionForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_llava_onevision
from graphprune.tiny_checkpoints import random_image, save_llava_onevision

from .helpers import close, hf_tokens, make_llm, vllm_tokens

# images of different aspect ratios give different grids; two images in one prompt are one crop each; text only
REQUESTS = [
    ("w9 w10 <image> w11 w12 w13", [random_image(0, 16, 32)]),
    ("w20 <image> w14 w15 w16 w17 w18", [random_image(1, 32, 16)]),
    ("w30 <image> w31 <image> w40", [random_image(2, 32), random_image(3, 16)]),
    ("w60 w61 w62 w63", []),
    ("w70 <video> w71 w72", [], [np.asarray([random_image(5 + i, 16) for i in range(4)])]),  # 4 frames: 17 tokens
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = tiny_llava_onevision(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)
    path = save_llava_onevision(model, tmp_path_factory.mktemp("llava_onevision"))
    llm = make_llm(path, {"method": "fastv", "k": 2, "keep": 0.5}, limit_mm_per_prompt={"image": 2, "video": 1})
    yield llm, path
    close(llm)


def test_greedy_tokens_equal_hf_path(case):
    llm, path = case
    method = gp.FastV(k=2, keep=0.5)
    expected = hf_tokens(LlavaOnevisionForConditionalGeneration, path, method, REQUESTS)
    unpruned = hf_tokens(LlavaOnevisionForConditionalGeneration, path, None, [REQUESTS[i] for i in (0, 1, 2, 4)])
    assert expected[:3] != unpruned[:3] and expected[4] != unpruned[3]  # pruning changes image and video tokens
    assert vllm_tokens(llm, REQUESTS) == expected
