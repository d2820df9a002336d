"""Shared tiny models, built once per session (helpers live in tests/helpers.py); the capture cache that lets a test
file capture each session model's decoder once; the test tiers (markers registered in pyproject.toml)."""

from __future__ import annotations

import copy
import weakref
from pathlib import Path

import pytest
import torch
from torch import fx

import graphprune.decoders.base
from graphprune.graph_cache import placement
from graphprune.testing import llava_inputs, mllama_inputs, tiny_llava

from .helpers import BATCH, FAMILIES, MLLAMA_BATCH

_CAPTURES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # decoder -> {(step, layout, placement): graph}


def pytest_collection_modifyitems(items):
    """Markers derived from others and from file names: ``compile`` tests are ``slow``; ``export`` marks the ONNX
    export files, ``vllm`` the files of ``tests/vllm``."""
    for item in items:
        path = Path(item.fspath)
        if item.get_closest_marker("compile"):
            item.add_marker(pytest.mark.slow)
        if path.name.startswith("test_export"):
            item.add_marker(pytest.mark.export)
        if path.parent.name == "vllm":
            item.add_marker(pytest.mark.vllm)


@pytest.fixture(autouse=True)
def _fresh_dynamo(request):
    """A ``compile`` test starts with Dynamo's caches empty: the models of one process share the code objects it
    compiles (``Module.__call__``, the optimized forward), whose entries would reach its recompile limit (8)."""
    if request.node.get_closest_marker("compile"):
        torch._dynamo.reset()


def _captured_once(capture, step: str):
    """``capture`` (``capture.capture_prefill`` or ``capture_decode``) memoised per decoder, layout, weights (the
    tensor objects, their dtypes and devices) and attention implementation; each call gets its own copy of the graph
    (the passes rewrite it in place), sharing the decoder's parameters as a fresh capture does."""

    def cached(decoder, layout):
        tensors = [named for module in decoder.modules() for named in (module._parameters, module._buffers)]
        weights = tuple(id(t) for named in tensors for t in named.values())  # a replaced weight: capture again
        key = (step, layout, placement(tensors), weights, getattr(decoder.config, "_attn_implementation", None))
        graphs = _CAPTURES.setdefault(decoder, {})
        if key not in graphs:
            graphs[key] = capture(decoder, layout)
        graph = graphs[key]
        fresh = fx.GraphModule(graph, copy.deepcopy(graph.graph))
        fresh.meta.update(graph.meta)
        return fresh

    return cached


@pytest.fixture
def capture_once(monkeypatch):
    """Capture once, rewrite many: within the test, ``optimize`` reuses the unrewritten graphs captured earlier in
    the session for the same decoder (same layout, dtype, device, attention), so each further method costs only its
    passes. For tests on session models that check results, not capture itself."""
    base = graphprune.decoders.base
    monkeypatch.setattr(base, "capture_prefill", _captured_once(base.capture_prefill, "prefill"))
    monkeypatch.setattr(base, "capture_decode", _captured_once(base.capture_decode, "decode"))


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
