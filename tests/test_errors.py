"""Bad input: a clear exception that names what was wrong and what is accepted; the model untouched."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import graphprune as gp
from graphprune import optimized
from graphprune.reference import cross_attention_trim_reference

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)


def _untouched(model):
    return not {"forward", "generate", "_graphprune"} & set(vars(model))


@pytest.mark.parametrize("k", [4, 7])
def test_k_out_of_range_names_the_valid_range(llava, k):
    with pytest.raises(ValueError, match=r"1 <= k < 4"):
        gp.optimize(llava, gp.FastV(k=k))
    assert _untouched(llava)


def test_optimize_twice_is_an_error(llava, batch):
    gp.optimize(llava, gp.FastV(k=2))
    try:
        with pytest.raises(RuntimeError, match="already optimized.*restore"):
            gp.optimize(llava, gp.FastV(k=1))
        assert llava._graphprune.method == gp.FastV(k=2)
    finally:
        gp.restore(llava)


def test_restore_without_optimize_is_an_error(llava):
    with pytest.raises(ValueError, match="not optimized"):
        gp.restore(llava)


def test_unsupported_model_lists_supported_classes():
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)
    ).eval()
    with pytest.raises(gp.UnsupportedModelError, match="LlamaForCausalLM.*LlavaForConditionalGeneration"):
        gp.optimize(model, gp.FastV())
    assert _untouched(model)


def test_fastv_on_mllama_is_refused(mllama):
    with pytest.raises(ValueError, match="FastV does not fit MllamaForConditionalGeneration.*CrossAttentionTrim"):
        gp.optimize(mllama, gp.FastV())
    assert _untouched(mllama)


def test_cross_attention_trim_on_llava_is_refused(llava):
    with pytest.raises(ValueError, match="CrossAttentionTrim does not fit LlavaForConditionalGeneration.*FastV"):
        gp.optimize(llava, gp.CrossAttentionTrim())
    assert _untouched(llava)


def test_method_must_be_a_graphprune_method(llava):
    with pytest.raises(TypeError, match="graphprune.FastV"):
        gp.optimize(llava, {"k": 2})
    assert _untouched(llava)


def test_training_mode_is_refused(llava):
    llava.train()
    try:
        with pytest.raises(ValueError, match="model.eval()"):
            gp.optimize(llava, gp.FastV())
    finally:
        llava.eval()
    assert _untouched(llava)


@torch.no_grad()
def test_unsupported_calls_on_an_optimized_model(llava, batch):
    gp.optimize(llava, gp.FastV(k=2))
    try:
        with pytest.raises(ValueError, match="returns no loss"):
            llava(**batch, labels=batch["input_ids"])
        with pytest.raises(ValueError, match="output_hidden_states"):
            llava(**batch, output_hidden_states=True)
    finally:
        gp.restore(llava)


@torch.no_grad()
def test_beam_search_is_refused_until_restore(llava, batch):
    with pytest.raises(ValueError, match="beam search.*greedy or sampling"), optimized(llava, gp.FastV(k=2)):
        llava.generate(**batch, max_new_tokens=2, num_beams=2)
    assert _untouched(llava)
    assert llava.generate(**batch, max_new_tokens=2, num_beams=2).shape == (3, batch["input_ids"].shape[1] + 2)


@pytest.mark.parametrize(
    "method",
    [gp.FastV(k=2, keep=1e-9), gp.CrossAttentionTrim(keep=1e-9, select="topk"), gp.CrossAttentionTrim(keep=1e-9)],
    ids=str,
)
@torch.no_grad()
def test_a_tiny_keep_keeps_one_visual_unit_per_sample_not_none(request, method):
    """A positive keep keeps at least one visual token (FastV) or feature (per head, CrossAttentionTrim) of a
    sample that has any (SPEC FastV step 3; ``ceil(1e-9 * n)`` is 1, not 0)."""
    fastv = isinstance(method, gp.FastV)
    model = request.getfixturevalue("llava" if fastv else "mllama")
    inputs = request.getfixturevalue("batch" if fastv else "mllama_batch")
    with optimized(model, method):
        kept = gp.explain(model, **inputs).kept
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    if fastv:
        assert [len(k) for k in kept] == [1, 1, 0]  # the third sample has no image
        return
    heads = model.config.text_config.num_attention_heads
    assert all(1 <= len(k) <= (1 if method.select == "topk" else heads) for k in kept)
    reference = cross_attention_trim_reference(model, method, **inputs).kept
    assert [k.tolist() for k in kept] == [k.tolist() for k in reference]
