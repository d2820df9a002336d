"""A small max_num_batched_tokens: graphprune raises it and vLLM's multimodal budgets, so no prompt is split.

vLLM copies max_num_encoder_input_tokens and encoder_cache_size from the user's max_num_batched_tokens; were they
left there, a step whose images exceed them would schedule a prompt only up to its next image, and FastV would rank
on that part. Here 5 images in 4 concurrent requests need 80 encoder tokens per step, against the user's 64.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import LlavaForConditionalGeneration

import graphprune as gp
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import save_llava

from .helpers import close, hf_tokens, make_llm, vllm_tokens
from .test_llava import REQUESTS, TEXT_ONLY


def test_concurrent_images_beyond_the_users_budget_give_hf_tokens(tmp_path):
    model = tiny_llava(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=128)
    path = save_llava(model, tmp_path)
    llm = make_llm(path, {"method": "fastv", "k": 2, "keep": 0.5}, max_num_batched_tokens=64)
    try:
        requests = [*REQUESTS, TEXT_ONLY]  # the 4th request holds 2 images
        tokens = vllm_tokens(llm, requests)
    finally:
        close(llm)
    assert tokens == hf_tokens(LlavaForConditionalGeneration, path, gp.FastV(k=2, keep=0.5), requests)
