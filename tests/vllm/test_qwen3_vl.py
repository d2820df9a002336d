"""FastV in vLLM on Qwen3-VL and Qwen3-VL-MoE (DeepStack levels added to the first three decoder layers' outputs,
interleaved M-RoPE): greedy tokens equal graphprune's HF path for k inside and at the edge of the DeepStack layers."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_qwen3_vl
from graphprune.tiny_checkpoints import random_image, save_qwen3_vl

from .helpers import close, hf_tokens, make_llm, vllm_tokens

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
# images of 16, 36 and 16 tokens (16 and 24 pixels square, 2-pixel patches merged 2x2); different prompt lengths
REQUESTS = [
    (f"w9 w10 {IMAGE} w11 w12 w13", [random_image(0, 16)]),
    (f"w20 {IMAGE} w14 w15 w16 w17 w18", [random_image(1, 24)]),
    (f"w30 w31 w32 w33 w34 w35 {IMAGE} w40", [random_image(2, 16)]),
    ("w60 w61 w62 w63", []),  # text only, beside the image requests
]
# DeepStack levels 0-2 of 4 layers: layers 1 and 2 (k=1) or 2 (k=2) run pruned before their level is added
CASES = [(False, 1, 0.25, "last"), (False, 2, 0.5, "mean"), (True, 2, 0.5, "last")]
MODEL_CLASSES = {False: Qwen3VLForConditionalGeneration, True: Qwen3VLMoeForConditionalGeneration}


@pytest.fixture(scope="module", params=CASES, ids=lambda case: f"{'moe-' * case[0]}k{case[1]}-keep{case[2]}-{case[3]}")
def case(request, tmp_path_factory):
    moe, k, keep, query = request.param
    # experts of 96 (intermediate_size / 2) by 128: with square ones vLLM's and HF's loaders of the hub's fused
    # expert layout disagree (tokens differ); real checkpoints are not square
    model = tiny_qwen3_vl(
        moe=moe, hidden_size=128, intermediate_size=192, num_heads=4, num_kv_heads=2, mrope_section=(6, 5, 5)
    )
    path = save_qwen3_vl(model, tmp_path_factory.mktemp("qwen3_vl"))
    graphprune = {"method": "fastv", "k": k, "keep": keep, "query": query}
    llm = make_llm(path, graphprune, limit_mm_per_prompt={"image": 2, "video": 0})
    yield llm, path, MODEL_CLASSES[moe], gp.FastV(k=k, keep=keep, query=query)
    close(llm)


def test_greedy_tokens_equal_hf_path(case):
    llm, path, model_class, method = case
    expected = hf_tokens(model_class, path, method, REQUESTS)
    assert expected[:3] != hf_tokens(model_class, path, None, REQUESTS[:3])  # pruning changes these tokens
    assert vllm_tokens(llm, REQUESTS) == expected
