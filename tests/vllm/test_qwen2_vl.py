"""FastV in vLLM on Qwen2-VL and Qwen2.5-VL (M-RoPE: layers >= k get all three position rows of the kept tokens)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_qwen2_vl
from graphprune.tiny_checkpoints import random_image, save_qwen2_vl

from .helpers import close, hf_tokens, make_llm, vllm_tokens

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# images of 16, 36 and 16 tokens (16 and 24 pixels square, 2-pixel patches merged 2x2); different prompt lengths
REQUESTS = [
    (f"w9 w10 {IMAGE} w11 w12 w13", [random_image(0, 16)]),
    (f"w20 {IMAGE} w14 w15 w16 w17 w18", [random_image(1, 24)]),
    (f"w30 w31 w32 w33 w34 w35 {IMAGE} w40", [random_image(2, 16)]),
    ("w60 w61 w62 w63", []),  # text only, beside the image requests
]
CASES = [("2", 1, 0.25, "mean"), ("2", 2, 0.5, "last"), ("2.5", 2, 0.5, "last")]
MODEL_CLASSES = {"2": Qwen2VLForConditionalGeneration, "2.5": Qwen2_5_VLForConditionalGeneration}


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"qwen{case[0]}-k{case[1]}-keep{case[2]}-{case[3]}")
def case(request, tmp_path_factory):
    version, k, keep, query = request.param
    model = tiny_qwen2_vl(
        version=version, hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, mrope_section=(4, 6, 6)
    )
    path = save_qwen2_vl(model, tmp_path_factory.mktemp(f"qwen{version}"))
    llm = make_llm(path, {"method": "fastv", "k": k, "keep": keep, "query": query})
    yield llm, path, MODEL_CLASSES[version], gp.FastV(k=k, keep=keep, query=query)
    close(llm)


def test_greedy_tokens_equal_hf_path(case):
    llm, path, model_class, method = case
    expected = hf_tokens(model_class, path, method, REQUESTS)
    assert expected[:3] != hf_tokens(model_class, path, None, REQUESTS[:3])  # pruning changes these tokens
    assert vllm_tokens(llm, REQUESTS) == expected
