"""Shared tiny models, built once per session (helpers live in tests/helpers.py)."""

from __future__ import annotations

import pytest

from graphprune.testing import llava_inputs, mllama_inputs, tiny_llava

from .helpers import BATCH, FAMILIES, MLLAMA_BATCH


@pytest.fixture(scope="session")
def family_models():
    """One tiny model per family of ``helpers.FAMILIES``, built on first use."""
    models = {}

    def model(name):
        if name not in models:
            models[name] = FAMILIES[name].build()
            assert type(models[name]).__name__ == name
        return models[name]

    return model


@pytest.fixture(scope="session")
def llava(family_models):
    """Tiny LLaVA, SDPA attention, GQA (4 query heads, 2 key/value heads), 4 layers."""
    return family_models("LlavaForConditionalGeneration")


@pytest.fixture(scope="session")
def llava_eager():
    return tiny_llava(attn_implementation="eager", seed=1)


@pytest.fixture(scope="session")
def batch(llava):
    return llava_inputs(llava, BATCH)


@pytest.fixture(scope="session")
def mllama(family_models):
    """Tiny Mllama: 5 layers, cross-attention at 1, 3 and 4, GQA (4 query heads, 2 key/value heads)."""
    return family_models("MllamaForConditionalGeneration")


@pytest.fixture(scope="session")
def mllama_batch(mllama):
    return mllama_inputs(mllama, MLLAMA_BATCH)
