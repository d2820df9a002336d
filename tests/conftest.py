"""Shared tiny models (built once per session) and helpers."""

from __future__ import annotations

import contextlib

import pytest
import torch

import graphprune as gp
from graphprune.tiny import llava_inputs, tiny_llava

# (text_before, n_images, text_after): 16 visual tokens per image; left-padded to the longest.
BATCH = [(5, 1, 4), (2, 2, 3), (6, 0, 3)]
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


@contextlib.contextmanager
def optimized(model, method, **kwargs):
    gp.optimize(model, method, **kwargs)
    try:
        yield model
    finally:
        gp.restore(model)


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def slot_positions(model):
    """Per sample, the original position of each valid slot of the last pruned prefill."""
    record = model._graphprune.decoder.last_prefill
    return [record.keep_index[b][record.slot_valid[b]] for b in range(record.keep_index.shape[0])]
