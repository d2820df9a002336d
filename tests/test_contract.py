"""The behaviour contract (SPEC) once, for every family x method in ``helpers.FAMILIES``: keep=1 and text-only
inputs exact, the pass equals the independent reference, cache lengths per layer, a batch gives each sample what
it gives alone, restore exact, sampling and eos as the reference. Checks that can share one ``optimize`` (one
capture, the slow part) share one test.

Each family is a tiny random-weight model of the real transformers class and a left-padded batch whose samples
have different visual counts: LLaVA, LLaVA-NeXT (any-resolution crops and newlines, several images and spans),
Video-LLaVA (images and 8-frame videos), Qwen2-VL and Qwen2.5-VL (M-RoPE, image grids and a video), Mllama
(cross-attention, images of 4, 2 and 1 tiles).
"""

from dataclasses import replace

import pytest
import torch

import graphprune as gp
from graphprune import optimized
from graphprune.models import adapter_for

from .helpers import (
    CASES,
    FAMILIES,
    LOGITS_RTOL,
    REPRESENTATIVES,
    VARIANT_PAIRS,
    VARIANTS,
    assert_clear_cut,
    expected_cache_lengths,
    first_fast,
    positional,
    reference_run,
    rel_error,
    slot_positions,
    visual_units,
)

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per family model

NEW_TOKENS = 5
FIRST_VARIANTS = first_fast([(name, family.variants[0]) for name, family in FAMILIES.items()], REPRESENTATIVES)
# checks of the runtime more than of a family: in the fast tier for one family per method kind
SHARED_VARIANTS = first_fast(VARIANT_PAIRS, REPRESENTATIVES)
SAMPLING = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0)


def case_id(value):
    return str(value).removesuffix("ForConditionalGeneration") if isinstance(value, str) else str(value)


@pytest.fixture
def model_and_batch(request, family_models):
    name = request.node.callspec.params["name"]
    model = family_models(name)
    return model, FAMILIES[name].inputs(model, FAMILIES[name].samples)


@pytest.mark.parametrize(("name", "method"), VARIANTS, ids=case_id)
@torch.no_grad()
def test_keep_one_equals_the_unmodified_model_exactly(model_and_batch, name, method):
    model, batch = model_and_batch
    expected = model(**batch).logits
    expected_ids = model.generate(**batch, max_new_tokens=6, do_sample=False)
    with optimized(model, replace(method, keep=1.0)):
        assert torch.equal(model(**batch).logits, expected)
        assert torch.equal(model.generate(**batch, max_new_tokens=6, do_sample=False), expected_ids)
        report = gp.explain(model, **batch)
    every = visual_units(model, batch)
    assert all(torch.equal(kept, units) for kept, units in zip(report.kept, every, strict=True))
    assert report.flops_after == report.flops_before and report.kv_bytes_after == report.kv_bytes_before


@pytest.mark.parametrize(("name", "method"), CASES, ids=case_id)
@torch.no_grad()
def test_pass_equals_reference_and_caches_fewer_positions(model_and_batch, name, method):
    """Kept sets, logits (1e-4 relative; FastV at every kept position) and greedy tokens equal the reference's;
    the cache holds, per layer, the positions the method keeps, after the prefill and after decode steps."""
    model, batch = model_and_batch
    expected = reference_run(model, method, batch, NEW_TOKENS)
    reference = expected.reference
    assert_clear_cut(reference, method)
    with optimized(model, method):
        out = model(**batch, use_cache=True)
        slots = slot_positions(model)
        report = gp.explain(model, **batch)
        generated = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, return_dict_in_generate=True)
    logits, cache = out.logits, out.past_key_values
    assert report.n_visual == [len(units) for units in visual_units(model, batch)]
    for b in range(batch["input_ids"].shape[0]):
        assert torch.equal(report.kept[b], reference.kept[b]), f"sample {b}"
        if positional(method):  # valid slots are the last ones
            assert rel_error(logits[b, -len(slots[b]) :], expected.logits[b, slots[b]]) <= LOGITS_RTOL, f"sample {b}"
        else:
            assert torch.equal(slots[b], reference.kept[b]), f"sample {b}"
    assert rel_error(logits[:, -1], expected.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(generated.sequences, expected.ids)

    kept = report.kept if positional(method) else slots
    lengths = expected_cache_lengths(model, method, batch, kept)
    assert [layer.keys.shape[2] for layer in cache.layers] == lengths
    assert [layer.values.shape[2] for layer in cache.layers] == lengths
    if positional(method) or method.select == "topk":
        counts = [gp.methods.n_keep(method.keep, len(units)) for units in visual_units(model, batch)]
        assert [len(k) for k in kept] == counts
    actual_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert report.kv_bytes_after == actual_bytes < report.kv_bytes_before
    decoded = [layer.keys.shape[2] for layer in generated.past_key_values.layers]
    assert decoded == expected_cache_lengths(model, method, batch, kept, NEW_TOKENS - 1)  # the last is not fed back


@pytest.mark.parametrize(("name", "method"), SHARED_VARIANTS, ids=case_id)
@torch.no_grad()
def test_batch_equals_each_sample_alone_text_only_is_exact_and_restore_is_exact(model_and_batch, name, method):
    """A left-padded batch (different lengths and visual counts) gives each sample what it gives alone, and
    only visual units are kept; a text-only batch equals the unmodified model exactly; ``restore`` gives back
    the unmodified model exactly (weights, attributes, logits)."""
    model, batch = model_and_batch
    family = FAMILIES[name]
    units = visual_units(model, batch)
    text_only = family.inputs(model, family.text_only)
    unmodified = model(**batch).logits
    text_logits = model(**text_only).logits
    text_ids = model.generate(**text_only, max_new_tokens=NEW_TOKENS, do_sample=False)
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    with optimized(model, method):
        assert torch.equal(model(**text_only).logits, text_logits)
        assert torch.equal(model.generate(**text_only, max_new_tokens=NEW_TOKENS, do_sample=False), text_ids)
        logits = model(**batch).logits[:, -1]
        slots = slot_positions(model)
        kept = gp.explain(model, **batch).kept
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
        pad = batch["attention_mask"].shape[1] - batch["attention_mask"].sum(dim=1)
        for b, sample in enumerate(family.samples):
            shift = int(pad[b]) if positional(method) else 0
            alone = family.inputs(model, [sample], seed=b)
            assert torch.equal(alone["input_ids"][0], batch["input_ids"][b, pad[b] :])
            assert rel_error(model(**alone).logits[0, -1], logits[b]) <= LOGITS_RTOL, f"sample {b}"
            assert torch.equal(slot_positions(model)[0] + shift, slots[b]), f"sample {b}"
            assert torch.equal(gp.explain(model, **alone).kept[0] + shift, kept[b]), f"sample {b}"
            alone_ids = model.generate(**alone, max_new_tokens=NEW_TOKENS, do_sample=False)[0]
            assert torch.equal(alone_ids, ids[b, -len(alone_ids) :]), f"sample {b}"
            assert set(kept[b].tolist()) <= set(units[b].tolist()), f"sample {b}"
    assert not torch.equal(logits, unmodified[:, -1])
    assert not {"forward", "generate"} & set(vars(model)) and "forward" not in vars(adapter_for(model).decoder(model))
    assert not hasattr(model, "_graphprune")
    assert torch.equal(model(**batch).logits, unmodified)
    assert all(torch.equal(tensor, state[key]) for key, tensor in model.state_dict().items())


@pytest.mark.parametrize(("name", "method"), FIRST_VARIANTS, ids=case_id)
@torch.no_grad()
def test_sampling_and_eos_equal_the_reference(model_and_batch, name, method):
    """Sampling with the same seed gives the reference's tokens; greedy generation stops a sample at eos."""
    model, batch = model_and_batch
    torch.manual_seed(123)
    sampled = reference_run(model, method, batch, 6, **SAMPLING).ids
    greedy = reference_run(model, method, batch, 6).ids
    prompt = batch["input_ids"].shape[1]
    eos = int(greedy[0, prompt + 1])  # sample 0 ends after its second new token
    with optimized(model, method):
        torch.manual_seed(123)
        assert torch.equal(model.generate(**batch, max_new_tokens=6, **SAMPLING), sampled)
        ids = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    new = ids[0, prompt:]
    assert new[1] == eos and (new[2:] == model.generation_config.pad_token_id).all()
    for b in range(ids.shape[0]):
        row, expected = ids[b, prompt:], greedy[b, prompt : ids.shape[1]]
        stop = (expected == eos).nonzero()
        end = int(stop[0]) + 1 if len(stop) else len(expected)
        assert torch.equal(row[:end], expected[:end])


@pytest.mark.slow
@torch.no_grad()
def test_eager_attention_model_equals_reference(llava_eager):
    llava = FAMILIES["LlavaForConditionalGeneration"]
    batch = llava.inputs(llava_eager, llava.samples, seed=3)
    method = gp.FastV(k=2, keep=0.5)
    expected = reference_run(llava_eager, method, batch, NEW_TOKENS)
    with optimized(llava_eager, method):
        logits = llava_eager(**batch).logits
        report = gp.explain(llava_eager, **batch)
        ids = llava_eager.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert [kept.tolist() for kept in report.kept] == [kept.tolist() for kept in expected.reference.kept]
    assert rel_error(logits[:, -1], expected.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected.ids)
