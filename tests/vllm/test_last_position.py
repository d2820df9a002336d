"""A prompt ending with a visual token (SPEC FastV step 3): its last position is always kept and counts as one of the
``ceil(keep * n_visual)`` kept visual tokens, so layers >= k compute ``n_real - n_visual + ceil(keep * n_visual)``
rows per prompt, whatever the scores. Tokens equal graphprune's eager reference (mask mode) and its HF path.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: the vLLM plugin tests run in .venv-vllm (.ci/vllm-venv)")
from transformers import AutoProcessor, LlavaForConditionalGeneration

import graphprune as gp
import graphprune.reference.fastv as reference
from graphprune.testing import tiny_llava
from graphprune.tiny_checkpoints import random_image, save_llava

from .helpers import MAX_NEW_TOKENS, close, hf_tokens, make_llm, vllm_tokens
from .test_llava import N_VISUAL

METHOD = gp.FastV(k=2, keep=0.25)
REQUESTS = [
    ("w70 w71 <image>", [random_image(5, 32)]),
    ("w72 <image> w73 <image>", [random_image(6, 32), random_image(7, 32)]),
    ("<image>", [random_image(8, 32)]),
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    model = tiny_llava(hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vocab_size=128)
    path = save_llava(model, tmp_path_factory.mktemp("llava"))
    llm = make_llm(path, {"method": "fastv", "k": METHOD.k, "keep": METHOD.keep})
    yield llm, path
    close(llm)


def _record_rows(model) -> None:
    """A hook on layer k that logs how many rows of the flattened batch it computes in each step."""
    model.rows = []
    layer = model.language_model.model.layers[model.fastv.method.k]
    model.recording = layer.register_forward_pre_hook(lambda module, args: model.rows.append(args[1].shape[0]))


def _stop(model) -> list[int]:
    model.recording.remove()
    return model.rows


def test_layers_from_k_compute_the_layout_count(case):
    llm, _ = case
    llm.apply_model(_record_rows)
    vllm_tokens(llm, REQUESTS)
    rows = llm.apply_model(_stop)[0]
    n_visual = [len(images) * N_VISUAL for _, images in REQUESTS]
    n_text = [len(text.split()) - len(images) for text, images in REQUESTS]
    kept = [text + gp.methods.n_keep(METHOD.keep, visual) for text, visual in zip(n_text, n_visual, strict=True)]
    assert rows[0] == sum(kept)  # the three prompts prefill in one step


def test_kept_count_is_logged_per_request_at_debug_level(case):
    llm, _ = case
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("vllm.graphprune")  # under vLLM's logger: VLLM_LOGGING_LEVEL=DEBUG shows it
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        vllm_tokens(llm, REQUESTS[:1])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    [message] = [record.getMessage() for record in records]
    expected = r"graphprune: request \S+: layers >= k hold 6 of 18 prompt positions \(4 of 16 visual tokens\)"
    assert re.fullmatch(expected, message), message


@torch.no_grad()
def test_greedy_tokens_equal_the_reference_and_the_hf_path(case):
    llm, path = case
    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    expected = []
    for text, images in REQUESTS:
        inputs = processor(text=text, images=images, return_tensors="pt")
        ids = reference.fastv_reference_generate(model, METHOD, **inputs, max_new_tokens=MAX_NEW_TOKENS)
        expected.append(ids[0, inputs["input_ids"].shape[1] :].tolist())
    assert vllm_tokens(llm, REQUESTS) == expected
    assert hf_tokens(LlavaForConditionalGeneration, path, METHOD, REQUESTS) == expected
