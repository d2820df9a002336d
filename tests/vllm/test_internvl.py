"""FastV in vLLM on InternVL3 (``InternVLForConditionalGeneration``: image tiles plus a thumbnail, pixel shuffle;
videos, whose features vLLM places at ``<video>`` tokens): greedy tokens equal graphprune's HF path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import InternVLForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_internvl
from graphprune.tiny_checkpoints import random_image, save_internvl

from .helpers import close, hf_tokens, make_llm, vllm_tokens

# one tile, two tiles and a thumbnail, two images in one prompt; different prompt lengths; text only
REQUESTS = [
    ("w9 w10 <IMG_CONTEXT> w11 w12 w13", [random_image(0, 32)]),
    ("w20 <IMG_CONTEXT> w14 w15 w16 w17 w18", [random_image(1, 32, 64)]),
    ("w30 <IMG_CONTEXT> w31 <IMG_CONTEXT> w40", [random_image(2, 32), random_image(3, 32)]),
    ("w60 w61 w62 w63", []),
    ("w70 <video> w71 w72", [], [np.asarray([random_image(5 + i, 32) for i in range(4)])]),  # 4 frames of 16 tokens
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = tiny_internvl(image_size=32, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2)
    path = save_internvl(model, tmp_path_factory.mktemp("internvl"))
    llm = make_llm(path, {"method": "fastv", "k": 2, "keep": 0.5}, limit_mm_per_prompt={"image": 2, "video": 1})
    yield llm, path
    close(llm)


def test_greedy_tokens_equal_hf_path(case):
    llm, path = case
    method = gp.FastV(k=2, keep=0.5)
    expected = hf_tokens(InternVLForConditionalGeneration, path, method, REQUESTS)
    unpruned = hf_tokens(InternVLForConditionalGeneration, path, None, [REQUESTS[i] for i in (0, 1, 2, 4)])
    assert expected[:3] != unpruned[:3] and expected[4] != unpruned[3]  # pruning changes image and video tokens
    assert vllm_tokens(llm, REQUESTS) == expected
