"""Shared tiny models (built once per session) and helpers."""

from __future__ import annotations

import contextlib

import pytest
import torch

import graphprune as gp
from graphprune.testing import llava_inputs, mllama_inputs, tiny_llava, tiny_mllama

# (text_before, n_images, text_after): 16 visual tokens per image; left-padded to the longest.
BATCH = [(5, 1, 4), (2, 2, 3), (6, 0, 3)]
# (text_before, tiles per image, text_after): 17 features per tile, 4 tile slots per image.
MLLAMA_BATCH = [(1, [4], 5), (2, [2], 3), (0, [1], 6)]
LOGITS_RTOL = 1e-4


@pytest.fixture(scope="session")
def llava():
    """Tiny LLaVA, SDPA attention, GQA (4 query heads, 2 key/value heads), 4 layers."""
    return tiny_llava()


@pytest.fixture(scope="session")
def llava_eager():
    return tiny_llava(attn_implementation="eager", seed=1)


@pytest.fixture(scope="session")
def batch(llava):
    return llava_inputs(llava, BATCH)


@pytest.fixture(scope="session")
def mllama():
    """Tiny Mllama: 5 layers, cross-attention at 1, 3 and 4, GQA (4 query heads, 2 key/value heads)."""
    return tiny_mllama()


@pytest.fixture(scope="session")
def mllama_batch(mllama):
    return mllama_inputs(mllama, MLLAMA_BATCH)


@contextlib.contextmanager
def optimized(model, method, **kwargs):
    gp.optimize(model, method, **kwargs)
    try:
        yield model
    finally:
        gp.restore(model)


@torch.no_grad()
def unmodified_generate(model, method, inputs: dict, max_new_tokens: int) -> torch.Tensor:
    """Greedy tokens of ``model`` (optimised with ``method``) as it was before ``optimize``; optimised again after."""
    gp.restore(model)
    try:
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    finally:
        gp.optimize(model, method)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def slot_positions(model):
    """Per sample, the original position of each valid slot of the last pruned prefill."""
    record = model._graphprune.decoder.last_prefill
    return [record.keep_index[b][record.slot_valid[b]] for b in range(record.keep_index.shape[0])]
