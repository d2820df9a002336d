"""HF's compiled generate over a static cache (``compile_config``, ``fullgraph=True``): the decode steps run the
one-token step over the whole static buffers (``decoders/static_decode.py``: FastV and DART, and CrossAttentionTrim's
``topk`` and ``head_union``) and give eager graphprune's tokens; at keep=1.0 the unmodified model's compiled tokens."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from transformers import CompileConfig, MllamaForConditionalGeneration, StaticCache
from transformers.cache_utils import StaticLayer

import graphprune as gp
from graphprune.decoders import static_decode
from graphprune.testing import (
    features_per_tile,
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

pytestmark = pytest.mark.compile

STEPS = 5
# family -> (build, inputs builder, batch, pruning method)
FAMILIES = {
    "llava": (tiny_llava, llava_inputs, BATCH, gp.FastV(k=2, keep=0.5)),
    "llava_dart": (tiny_llava, llava_inputs, BATCH, gp.DART(k=2, keep=0.5)),
    "qwen2_vl": (
        functools.partial(tiny_qwen2_vl, version="2"),
        qwen2_vl_inputs,
        QWEN_SAMPLES,
        gp.FastV(k=1, keep=0.25),
    ),
    "mllama_topk": (tiny_mllama, mllama_inputs, MLLAMA_BATCH, gp.CrossAttentionTrim(0.5, "topk")),
    # head_union's kept count depends on the scores: the step reads the trimmed layers' whole buffers all the same
    "mllama_head_union": (tiny_mllama, mllama_inputs, MLLAMA_BATCH, gp.CrossAttentionTrim(0.5, "head_union")),
}
# transformers before Mllama's own _prepare_static_cache (5.17) sizes generate's static cross-attention layers by the
# text length: the features do not fit, and the unmodified model fails there too
MLLAMA_STATIC_GENERATE = "_prepare_static_cache" in MllamaForConditionalGeneration.__dict__


def _generate_params(names) -> list:
    """``names`` as parameters; Mllama's skipped where HF's static cache can't hold its features."""
    skip = pytest.mark.skipif(not MLLAMA_STATIC_GENERATE, reason="HF's static cache for Mllama too short (< 5.23)")
    return [pytest.param(name, marks=skip) if name.startswith("mllama") else name for name in names]


def compile_config() -> CompileConfig:
    config = CompileConfig(fullgraph=True, dynamic=False)
    config._compile_all_devices = True  # HF compiles on a GPU only, unless told
    return config


@torch.no_grad()
def greedy(model, inputs: dict, **options):
    """Greedy tokens and logits of ``generate`` over a static cache, and the cache it leaves."""
    out = model.generate(
        **inputs,
        max_new_tokens=STEPS,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        cache_implementation="static",
        **options,
    )
    return out.sequences, torch.stack(out.logits, dim=1), out.past_key_values


@pytest.mark.parametrize("name", _generate_params(FAMILIES))
def test_compiled_generate_equals_eager(name):
    build, make_inputs, samples, method = FAMILIES[name]
    model = build()
    inputs = make_inputs(model, samples)
    pruned = gp.optimize(model, method)
    ids, logits, _ = greedy(pruned, inputs)
    for _ in range(2):  # the second call replays the compiled step on the reset cache of a new selection
        got_ids, got_logits, cache = greedy(pruned, inputs, compile_config=compile_config())
        assert torch.equal(got_ids, ids)
        torch.testing.assert_close(got_logits, logits, rtol=LOGITS_RTOL, atol=1e-5)
    assert_pruned_lengths(pruned, cache, inputs["input_ids"].shape[1] + STEPS - 1)


def assert_pruned_lengths(pruned, cache, positions: int) -> None:
    """``cache``'s layers hold the pruned lengths: FastV's layers >= k fewer than the ``positions`` of layer 0;
    CrossAttentionTrim's cross-attention layers after the first fewer features than it, its text layers
    ``positions``."""
    held = [int(layer.get_seq_length()) for layer in cache.layers]
    layout = pruned._graphprune.layout
    if isinstance(pruned._graphprune.method, gp.CrossAttentionTrim):
        first, *later = layout.cross_attention_layers
        assert {held[i] for i in layout.self_attention_layers} == {positions}
        assert max(held[i] for i in later) < held[first]
    else:
        assert held[-1] < held[0] == positions  # layers >= k hold the pruned length


# family -> (build, inputs builder, batch, the method at keep=1.0)
KEEP_ONE = {
    "llava": (tiny_llava, llava_inputs, BATCH, gp.FastV(k=2, keep=1.0)),
    "mllama": (tiny_mllama, mllama_inputs, MLLAMA_BATCH, gp.CrossAttentionTrim(1.0, "topk")),
}


@pytest.mark.parametrize("name", _generate_params(KEEP_ONE))
def test_compiled_generate_at_keep_one_is_unmodified_compiled(name):
    build, make_inputs, samples, method = KEEP_ONE[name]
    model = build()
    inputs = make_inputs(model, samples)
    keep_one = gp.optimize(copy.deepcopy(model), method)
    ids, logits, _ = greedy(model, inputs, compile_config=compile_config())
    got_ids, got_logits, _ = greedy(keep_one, inputs, compile_config=compile_config())
    assert torch.equal(got_ids, ids)
    assert torch.equal(got_logits, logits)


def static_cache(model, inputs: dict, length: int) -> StaticCache:
    """A ``StaticCache`` of ``length`` positions for ``model``; as HF's generate makes it for Mllama, its
    cross-attention layers hold the prompt's features (images x tiles x patches)."""
    config = model.config.get_text_config(decoder=True)
    cache = StaticCache(config=config, max_cache_len=length)
    for layer_idx in getattr(config, "cross_attention_layers", None) or ():
        images, tiles = inputs["pixel_values"].shape[1:3]
        cache.layers[layer_idx] = StaticLayer(max_cache_len=images * tiles * features_per_tile(model))
    return cache


@torch.no_grad()
def own_loop(pruned, inputs: dict, compiled_steps: int, hole: bool = False) -> torch.Tensor:
    """Greedy prefill then one-token steps over a static cache, the first ``compiled_steps`` compiled (fullgraph, as
    HF compiles them); with ``hole``, the later steps' mask hides sample 0's first new position: every step's logits."""
    compiled = torch.compile(pruned.forward, fullgraph=True, backend="eager")  # the trace is what is tested: quicker
    cache = static_cache(pruned, inputs, inputs["input_ids"].shape[1] + STEPS)
    out = pruned(**inputs, past_key_values=cache, use_cache=True)
    mask, logits = inputs["attention_mask"], [out.logits[:, -1]]
    cross = inputs.get("cross_attention_mask")  # Mllama's: a row per position, generate repeats the prompt's last
    for step in range(STEPS - 1):
        token = logits[-1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        if hole and step == 1:
            mask[0, -2] = 0
        forward = compiled if step < compiled_steps else pruned
        rows = {}
        if cross is not None:  # the step's own row (transformers 5.17 reads it out of all the rows so far)
            cross = torch.cat([cross, cross[:, -1:]], dim=1)
            rows["cross_attention_mask"] = cross[:, -1:] if MLLAMA_STATIC_GENERATE else cross
        out = forward(input_ids=token, attention_mask=mask, past_key_values=cache, use_cache=True, **rows)
        logits.append(out.logits[:, -1])
    return torch.stack(logits, dim=1)


@pytest.fixture(scope="module", params=["llava", "mllama_topk"])
def pruned_model(request):
    build, make_inputs, samples, method = FAMILIES[request.param]
    model = build()
    return gp.optimize(model, method), make_inputs(model, samples)


def test_eager_steps_after_compiled_steps_continue_the_cache(pruned_model):
    """A user's loop that runs some steps compiled, then eager ones, gets the all-eager logits."""
    pruned, inputs = pruned_model
    torch.testing.assert_close(own_loop(pruned, inputs, 2), own_loop(pruned, inputs, 0), rtol=LOGITS_RTOL, atol=1e-5)


def test_compiled_steps_read_their_own_mask(pruned_model):
    """A compiled step sees what its mask lets it see (here a hidden earlier new position), as an eager one."""
    pruned, inputs = pruned_model
    want = own_loop(pruned, inputs, 0, hole=True)
    assert not torch.allclose(want, own_loop(pruned, inputs, 0), rtol=LOGITS_RTOL, atol=1e-5)  # the hole counts
    torch.testing.assert_close(own_loop(pruned, inputs, STEPS, hole=True), want, rtol=LOGITS_RTOL, atol=1e-5)


@torch.no_grad()
def test_a_reused_static_cache_keeps_the_step_state_in_place():
    """A static cache reset and filled again (a loop that replays its graphs) holds the new selection's state in
    the tensors of the first: a graph replay reads its inputs at fixed addresses."""
    model = tiny_llava()
    inputs = llava_inputs(model, BATCH)
    pruned = gp.optimize(model, gp.FastV(k=2, keep=0.5))
    config = model.config.get_text_config(decoder=True)
    cache = StaticCache(config=config, max_cache_len=inputs["input_ids"].shape[1] + STEPS)
    addresses = []
    for prompt in (inputs, {**inputs, "pixel_values": inputs["pixel_values"].flip(0)}):
        cache.reset()
        pruned(**prompt, past_key_values=cache, use_cache=True)
        state = getattr(cache, static_decode.STATE_ATTR)
        addresses.append([tensor.data_ptr() for tensor in (state.prompt_valid, state.kept_valid, state.full_length)])
    assert addresses[1] == addresses[0]
    assert torch.equal(state.kept_valid[:, : state.pruned_length], pruned._graphprune.last_record.slot_valid)


@torch.no_grad()
def test_compiled_prefill_is_refused_when_pruning():
    model = tiny_llava()
    inputs = llava_inputs(model, BATCH)
    pruned = gp.optimize(model, gp.FastV(k=2, keep=0.5))
    with pytest.raises(Exception, match="graphprune prunes the prompt eagerly and compiles only one-token decode"):
        torch.compile(pruned.forward, fullgraph=True)(**inputs)


@torch.no_grad()
def test_compiled_step_over_a_dynamic_cache_is_refused():
    """A compiled step continuing a trimmed prefill over a ``DynamicCache`` (no static buffers) is refused."""
    model = tiny_mllama()
    inputs = mllama_inputs(model, MLLAMA_BATCH)
    trimmed = gp.optimize(model, gp.CrossAttentionTrim(0.5, "topk"))
    out = trimmed(**inputs, use_cache=True)
    token = out.logits[:, -1].argmax(-1, keepdim=True)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1)
    step = dict(input_ids=token, attention_mask=mask, cross_attention_mask=inputs["cross_attention_mask"][:, -1:])
    with pytest.raises(Exception, match="graphprune compiles decode steps only over a static cache"):
        torch.compile(trimmed.forward, fullgraph=True, backend="eager")(
            **step, past_key_values=out.past_key_values, use_cache=True
        )


def test_compiled_generate_over_gemma3_pruned_static_cache_is_refused():
    """Gemma 3's pruned static cache runs eagerly (``tests/test_static_cache.py``); its decode graph builds sliding and
    image-block masks, with no key-mask step to compile: refused, naming graphprune and what to do."""
    model = tiny_gemma3(attn_implementation="eager", seed=2)
    inputs = gemma3_inputs(model, [(3, 2, 4), (2, 1, 3)])
    pruned = gp.optimize(model, gp.FastV(k=2, keep=0.5))
    with pytest.raises(Exception, match="graphprune has no compiled one-token step for this decoder and method"):
        greedy(pruned, inputs, compile_config=compile_config())
