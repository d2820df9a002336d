"""Graph replay: ``torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)`` over a ``StaticCache``
gives eager graphprune's tokens (on CPU inductor compiles without CUDA graphs); ``gp.optimize(...,
compile="reduce-overhead")`` makes ``generate`` decode over HF's static cache under HF's compiled steps."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache

import graphprune as gp
from graphprune.generation_checks import GRAPH_REPLAY
from graphprune.testing import llava_inputs, tiny_gemma3, tiny_llava

from .helpers import BATCH

METHOD = gp.FastV(k=2, keep=0.5)
STEPS = 4


@torch.no_grad()
def loop_tokens(pruned, inputs: dict, forward) -> torch.Tensor:
    """Greedy tokens of an eager prefill then ``STEPS - 1`` one-token steps of ``forward`` over a ``StaticCache``."""
    config = pruned.config.get_text_config(decoder=True)
    cache = StaticCache(config=config, max_cache_len=inputs["input_ids"].shape[1] + STEPS)
    out = pruned(**inputs, past_key_values=cache, use_cache=True)
    mask, tokens = inputs["attention_mask"], [out.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(STEPS - 1):
        mask = torch.cat([mask, torch.ones_like(tokens[-1])], dim=1)
        out = forward(input_ids=tokens[-1], attention_mask=mask, past_key_values=cache, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)


@pytest.mark.compile
def test_reduce_overhead_loop_over_static_cache_gives_eager_tokens():
    """Inductor's reduce-overhead mode (CUDA graphs on a GPU, plain inductor on CPU) compiles the one-token steps."""
    model = tiny_llava()
    inputs = llava_inputs(model, BATCH)
    pruned = gp.optimize(model, METHOD)
    want = loop_tokens(pruned, inputs, pruned.forward)
    compiled = torch.compile(pruned.forward, mode="reduce-overhead", fullgraph=True)
    assert torch.equal(loop_tokens(pruned, inputs, compiled), want)


@pytest.fixture
def generate_calls(monkeypatch):
    """The keyword arguments of every HF ``generate`` call that an optimized tiny LLaVA makes (spied on its class,
    before ``optimize`` wraps it)."""
    model = tiny_llava()
    calls = []
    original = type(model).generate

    def spy(self, *args, **kwargs):
        calls.append(dict(kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    return model, calls


@pytest.mark.compile  # HF compiles the decode steps
@torch.no_grad()
def test_graph_replay_mode_generates_over_a_static_compiled_cache(generate_calls):
    model, calls = generate_calls
    inputs = llava_inputs(model, BATCH)
    options = dict(max_new_tokens=STEPS, do_sample=False)
    with gp.optimized(model, METHOD):
        want = model.generate(**inputs, **options)
    with gp.optimized(model, METHOD, compile=GRAPH_REPLAY):
        got = model.generate(**inputs, **options)  # on CPU HF runs the static cache's steps uncompiled
        config = calls[-1]["compile_config"]
        assert (calls[-1]["cache_implementation"], config.mode, config.fullgraph, config.dynamic) == (
            "static",
            "reduce-overhead",
            True,
            False,
        )
        assert torch.equal(got, want)
        model.generate(**inputs, **options, cache_implementation="dynamic")  # a call that names its cache keeps it
        assert "compile_config" not in calls[-1]
        model.generate(**inputs, **options, past_key_values=DynamicCache())
        assert "compile_config" not in calls[-1]


@pytest.mark.parametrize("compile", ["max-autotune", 1, None])
def test_unknown_compile_mode_is_refused_and_the_model_left_alone(compile):
    model = tiny_llava()
    forward = model.forward
    with pytest.raises(ValueError, match='graphprune.optimize takes compile=False, True or "reduce-overhead"'):
        gp.optimize(model, METHOD, compile=compile)
    assert model.forward == forward and not hasattr(model, "_graphprune")


def test_graph_replay_mode_is_refused_for_a_sliding_window_decoder():
    """Gemma 3's pruned decode steps build sliding-window and image-block masks: no one-token step to compile."""
    model = tiny_gemma3(attn_implementation="eager")
    with pytest.raises(ValueError, match='graphprune\'s compile="reduce-overhead".*sliding'):
        gp.optimize(model, METHOD, compile=GRAPH_REPLAY)
    assert not hasattr(model, "_graphprune")


@pytest.mark.compile
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs (graph replay proper) need a CUDA device")
@torch.no_grad()
def test_graph_replay_generate_on_gpu_gives_eager_tokens():
    model = tiny_llava().cuda()
    inputs = {name: value.cuda() for name, value in llava_inputs(model, BATCH).items()}
    options = dict(max_new_tokens=STEPS, do_sample=False)
    with gp.optimized(model, METHOD):
        want = model.generate(**inputs, **options)
    with gp.optimized(model, METHOD, compile=GRAPH_REPLAY):
        for _ in range(2):  # the second call replays the captured step on the reset cache
            assert torch.equal(model.generate(**inputs, **options), want)
