"""FastV in vLLM on Idefics3 and SmolVLM (image splitting into tiles plus a global tile, pixel-shuffle connector):
greedy tokens equal graphprune's HF path."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import Idefics3ForConditionalGeneration, SmolVLMForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_idefics3
from graphprune.tiny_checkpoints import random_image, save_idefics3

from .helpers import close, hf_tokens, make_llm, vllm_tokens

# a single tile (no split), a 1x2 grid plus the global tile, two images in one prompt; text only
REQUESTS = [
    ("w9 w10 <image> w11 w12 w13", [random_image(0, 32)]),
    ("w20 <image> w14 w15 w16 w17 w18", [random_image(1, 32, 64)]),
    ("w30 <image> w31 <image> w40", [random_image(2, 64, 32), random_image(3, 20)]),
    ("w60 w61 w62 w63", []),
]


MODEL_CLASSES = {"idefics3": Idefics3ForConditionalGeneration, "smolvlm": SmolVLMForConditionalGeneration}


@pytest.fixture(scope="module", params=list(MODEL_CLASSES))
def case(request, tmp_path_factory):
    version = request.param
    model = tiny_idefics3(
        version=version, image_size=32, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2
    )
    path = save_idefics3(model, tmp_path_factory.mktemp(version))
    llm = make_llm(path, {"method": "fastv", "k": 2, "keep": 0.5})
    yield llm, path, MODEL_CLASSES[version]
    close(llm)


def test_greedy_tokens_equal_hf_path(case):
    llm, path, model_class = case
    method = gp.FastV(k=2, keep=0.5)
    expected = hf_tokens(model_class, path, method, REQUESTS)
    assert expected[:3] != hf_tokens(model_class, path, None, REQUESTS[:3])
    assert vllm_tokens(llm, REQUESTS) == expected
