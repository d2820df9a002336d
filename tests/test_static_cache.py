"""HF's static caches: a user's own loop over a ``StaticCache`` and ``generate(cache_implementation="static")`` give
the tokens and logits of a ``DynamicCache``; at keep=1.0 the unmodified model's over the same cache, bit for bit."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticSlidingWindowLayer

import graphprune as gp
from graphprune.testing import (
    gemma3_inputs,
    llava_inputs,
    mllama_inputs,
    qwen2_vl_inputs,
    tiny_gemma3,
    tiny_llava,
    tiny_mllama,
    tiny_qwen2_vl,
)

from .helpers import BATCH, LOGITS_RTOL, MLLAMA_BATCH, QWEN_SAMPLES

STEPS = 5
# family -> (build, inputs builder, batch, pruning method, the same method at keep=1.0)
FAMILIES = {
    "llava": (tiny_llava, llava_inputs, BATCH, gp.FastV(k=2, keep=0.5), gp.FastV(k=2, keep=1.0)),
    "qwen2_vl": (
        functools.partial(tiny_qwen2_vl, version="2"),
        qwen2_vl_inputs,
        QWEN_SAMPLES,
        gp.FastV(k=1, keep=0.25),
        gp.FastV(k=1, keep=1.0),
    ),
    "mllama": (
        tiny_mllama,
        mllama_inputs,
        MLLAMA_BATCH,
        gp.CrossAttentionTrim(0.5, "topk"),
        gp.CrossAttentionTrim(1.0, "topk"),
    ),
    "gemma3": (
        functools.partial(tiny_gemma3, attn_implementation="eager", seed=2),
        gemma3_inputs,
        [(3, 2, 4), (2, 1, 3)],
        gp.FastV(k=2, keep=0.5),
        gp.FastV(k=2, keep=1.0),
    ),
}
FASTV = ["llava", "qwen2_vl"]
# the families whose own loop runs here (Qwen2-VL's needs M-RoPE positions per step, which generate computes)
OWN_LOOP = ["llava"]


def _fast_first(names: list[str]) -> list:
    """``names`` as parameters, the first in the fast tier and the others slow."""
    return [names[0], *(pytest.param(name, marks=pytest.mark.slow) for name in names[1:])]


@pytest.fixture(scope="module")
def built():
    """Per family: the unmodified model, its optimised copies (pruning, keep=1.0) and the batch; built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            build, make_inputs, samples, method, keep_one = FAMILIES[name]
            model = build()
            inputs = make_inputs(model, samples)
            cache[name] = model, gp.optimize(copy.deepcopy(model), method), gp.optimize(copy.deepcopy(model), keep_one)
            cache[name] += (inputs,)
        return cache[name]

    return get


def text_config(model):
    return model.config.get_text_config(decoder=True)


@torch.no_grad()
def own_loop(model, inputs: dict, cache) -> torch.Tensor:
    """Greedy prefill then ``STEPS`` one-token steps over ``cache``, as a user writes them: every step's logits."""
    return own_loop_cache(model, inputs, cache)[0]


@torch.no_grad()
def own_loop_cache(model, inputs: dict, cache) -> tuple[torch.Tensor, object]:
    """``own_loop``'s logits and the cache it leaves."""
    mask = inputs["attention_mask"]
    out = model(**inputs, past_key_values=cache, use_cache=True)
    logits = [out.logits[:, -1]]
    for _ in range(STEPS):
        token = logits[-1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        out = model(input_ids=token, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, dim=1), out.past_key_values


@torch.no_grad()
def greedy(model, inputs: dict, **options):
    out = model.generate(
        **inputs,
        max_new_tokens=STEPS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        **options,
    )
    return out.sequences, torch.stack(out.logits, dim=1)


@pytest.mark.parametrize("extra_room", [0, 40])
@pytest.mark.parametrize("name", OWN_LOOP)
def test_own_loop_over_static_cache_equals_dynamic(built, name, extra_room):
    _, pruned, _, inputs = built(name)
    length = inputs["input_ids"].shape[1] + STEPS + extra_room
    dynamic, dynamic_cache = own_loop_cache(pruned, inputs, DynamicCache(config=text_config(pruned)))
    static, static_cache = own_loop_cache(pruned, inputs, StaticCache(config=text_config(pruned), max_cache_len=length))
    torch.testing.assert_close(static, dynamic, rtol=LOGITS_RTOL, atol=1e-5)
    held = [layer.keys.shape[2] for layer in dynamic_cache.layers]
    assert held[-1] < held[0]  # layers >= k hold the pruned length ...
    assert [int(layer.get_seq_length()) for layer in static_cache.layers] == held  # ... in the static buffers too


@pytest.mark.parametrize("name", OWN_LOOP)
def test_own_loop_over_static_cache_at_keep_one_is_unmodified_bit_exact(built, name):
    model, _, keep_one, inputs = built(name)
    length = inputs["input_ids"].shape[1] + STEPS + 7
    want = own_loop(model, inputs, StaticCache(config=text_config(model), max_cache_len=length))
    got = own_loop(keep_one, inputs, StaticCache(config=text_config(model), max_cache_len=length))
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", OWN_LOOP)
def test_static_cache_is_reused_by_a_second_prompt(built, name):
    """A static cache reset and filled again (as ``generate`` reuses its own) starts a new selection."""
    _, pruned, _, inputs = built(name)
    cache = StaticCache(config=text_config(pruned), max_cache_len=inputs["input_ids"].shape[1] + STEPS)
    own_loop(pruned, inputs, cache)
    cache.reset()
    again = own_loop(pruned, inputs, cache)
    torch.testing.assert_close(again, own_loop(pruned, inputs, DynamicCache()), rtol=LOGITS_RTOL, atol=1e-5)


@pytest.mark.parametrize("name", _fast_first([*FASTV, "mllama", "gemma3"]))
def test_generate_with_static_cache_equals_dynamic(built, name):
    _, pruned, _, inputs = built(name)
    ids, logits = greedy(pruned, inputs)
    for _ in range(2):  # generate keeps its static cache and resets it for the next call
        static_ids, static_logits = greedy(pruned, inputs, cache_implementation="static")
        assert torch.equal(static_ids, ids)
        torch.testing.assert_close(static_logits, logits, rtol=LOGITS_RTOL, atol=1e-5)


@pytest.mark.parametrize("name", _fast_first([*FASTV, "mllama", "gemma3"]))
def test_generate_with_static_cache_at_keep_one_is_unmodified_bit_exact(built, name):
    model, _, keep_one, inputs = built(name)
    ids, logits = greedy(model, inputs, cache_implementation="static")
    got_ids, got_logits = greedy(keep_one, inputs, cache_implementation="static")
    assert torch.equal(got_ids, ids)
    assert torch.equal(got_logits, logits)


@pytest.mark.slow  # fast tier: the static cache of one family (CONTRIBUTING.md)
def test_gemma3_pruned_over_its_hybrid_static_cache_equals_dynamic(built):
    """Gemma 3's static cache holds a window per sliding layer (shorter than this prompt); a pruned prefill gives
    those layers every position (static layers as long as the full ones): a ``DynamicCache``'s logits, layers >= k
    at the pruned length."""
    _, pruned, _, inputs = built("gemma3")
    config = text_config(pruned)
    assert config.sliding_window < inputs["input_ids"].shape[1]
    dynamic, dynamic_cache = own_loop_cache(pruned, inputs, DynamicCache(config=config))
    cache = StaticCache(config=config, max_cache_len=inputs["input_ids"].shape[1] + STEPS)
    assert any(type(layer) is StaticSlidingWindowLayer for layer in cache.layers)
    static, static_cache = own_loop_cache(pruned, inputs, cache)
    torch.testing.assert_close(static, dynamic, rtol=LOGITS_RTOL, atol=1e-5)
    held = [layer.keys.shape[2] for layer in dynamic_cache.layers]
    assert held[-1] < held[0]
    assert [int(layer.get_seq_length()) for layer in static_cache.layers] == held


@torch.no_grad()
def test_custom_4d_mask_is_refused_when_pruning(built):
    _, pruned, _, inputs = built("llava")
    length = inputs["input_ids"].shape[1]
    custom = torch.ones(length, length, dtype=torch.bool)[None, None].expand(len(BATCH), 1, -1, -1)  # no causality
    with pytest.raises(ValueError, match="graphprune.*4-D attention_mask"):
        pruned(**{**inputs, "attention_mask": custom})


@torch.no_grad()
def test_plain_4d_mask_equals_its_2d_mask(built):
    """A 4-D mask that is the causal mask of a padding mask (what HF builds for a static cache) is that mask."""
    _, pruned, _, inputs = built("llava")
    mask = inputs["attention_mask"].bool()
    length = mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    four_d = (causal[None] & mask[:, None, :])[:, None]
    got = pruned(**{**inputs, "attention_mask": four_d}).logits[:, -1]
    assert torch.equal(got, pruned(**inputs).logits[:, -1])
