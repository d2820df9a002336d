"""The behaviour contract (SPEC) once, for every family x method in ``helpers.FAMILIES``: keep=1 and text-only
inputs exact, the pass equals the independent reference, a batch gives each sample what it gives alone, cache
lengths per layer, restore exact, sampling and eos as the reference.

Each family is a tiny random-weight model of the real transformers class and a left-padded batch whose samples
have different visual counts: LLaVA, LLaVA-NeXT (any-resolution crops and newlines, several images and spans),
Video-LLaVA (images and 8-frame videos), Qwen2-VL and Qwen2.5-VL (M-RoPE, image grids and a video), Mllama
(cross-attention, images of 4, 2 and 1 tiles).
"""

from dataclasses import replace

import pytest
import torch

import graphprune as gp

from .helpers import (
    CASES,
    FAMILIES,
    LOGITS_RTOL,
    VARIANTS,
    assert_clear_cut,
    expected_cache_lengths,
    optimized,
    positional,
    reference_run,
    rel_error,
    slot_positions,
    visual_units,
)

NEW_TOKENS = 5
FIRST_VARIANTS = [(name, family.variants[0]) for name, family in FAMILIES.items()]
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


@pytest.mark.parametrize(("name", "method"), VARIANTS, ids=case_id)
@torch.no_grad()
def test_inputs_without_visual_tokens_equal_the_unmodified_model_exactly(family_models, name, method):
    model = family_models(name)
    text_only = FAMILIES[name].inputs(model, FAMILIES[name].text_only)
    expected = model(**text_only).logits
    expected_ids = model.generate(**text_only, max_new_tokens=NEW_TOKENS, do_sample=False)
    with optimized(model, method):
        assert torch.equal(model(**text_only).logits, expected)
        assert torch.equal(model.generate(**text_only, max_new_tokens=NEW_TOKENS, do_sample=False), expected_ids)


@pytest.mark.parametrize(("name", "method"), CASES, ids=case_id)
@torch.no_grad()
def test_pass_equals_reference(model_and_batch, name, method):
    """Kept sets, logits (1e-4 relative; FastV at every kept position) and greedy tokens."""
    model, batch = model_and_batch
    expected = reference_run(model, method, batch, NEW_TOKENS)
    reference = expected.reference
    assert_clear_cut(reference, method)
    with optimized(model, method):
        logits = model(**batch).logits
        slots = slot_positions(model)
        report = gp.explain(model, **batch)
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert report.n_visual == [len(units) for units in visual_units(model, batch)]
    for b in range(batch["input_ids"].shape[0]):
        assert torch.equal(report.kept[b], reference.kept[b]), f"sample {b}"
        if positional(method):  # valid slots are the last ones
            assert rel_error(logits[b, -len(slots[b]) :], expected.logits[b, slots[b]]) <= LOGITS_RTOL, f"sample {b}"
        else:
            assert torch.equal(slots[b], reference.kept[b]), f"sample {b}"
    assert rel_error(logits[:, -1], expected.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected.ids)


@pytest.mark.parametrize(("name", "method"), VARIANTS, ids=case_id)
@torch.no_grad()
def test_a_padded_batch_gives_each_sample_what_it_gives_alone(model_and_batch, name, method):
    """Samples of different lengths (left padding) and visual counts; nothing but visual units is kept."""
    model, batch = model_and_batch
    family = FAMILIES[name]
    units = visual_units(model, batch)
    with optimized(model, method):
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


@pytest.mark.parametrize(("name", "method"), CASES, ids=case_id)
@torch.no_grad()
def test_cache_lengths_per_layer(model_and_batch, name, method):
    model, batch = model_and_batch
    with optimized(model, method):
        cache = model(**batch, use_cache=True).past_key_values
        slots = slot_positions(model)
        report = gp.explain(model, **batch)
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    kept = report.kept if positional(method) else slots
    assert [layer.keys.shape[2] for layer in cache.layers] == expected_cache_lengths(model, method, batch, kept)
    assert [layer.values.shape[2] for layer in cache.layers] == expected_cache_lengths(model, method, batch, kept)
    if positional(method) or method.select == "topk":
        counts = [gp.methods.n_keep(method.keep, len(units)) for units in visual_units(model, batch)]
        assert [len(k) for k in kept] == counts
    actual_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert report.kv_bytes_after == actual_bytes < report.kv_bytes_before
    lengths = [layer.keys.shape[2] for layer in out.past_key_values.layers]
    assert lengths == expected_cache_lengths(model, method, batch, kept, new_tokens=3)  # the last is not fed back


@pytest.mark.parametrize("name", FAMILIES, ids=case_id)
@torch.no_grad()
def test_restore_is_exact(model_and_batch, name):
    model, batch = model_and_batch
    state = {key: tensor.clone() for key, tensor in model.state_dict().items()}
    expected = model(**batch).logits
    gp.optimize(model, FAMILIES[name].methods[0])
    assert not torch.equal(model(**batch).logits[:, -1], expected[:, -1])
    gp.restore(model)
    assert not {"forward", "generate"} & set(vars(model)) and "forward" not in vars(model.model.language_model)
    assert not hasattr(model, "_graphprune")
    assert torch.equal(model(**batch).logits, expected)
    assert all(torch.equal(tensor, state[key]) for key, tensor in model.state_dict().items())


@pytest.mark.parametrize(("name", "method"), FIRST_VARIANTS, ids=case_id)
@torch.no_grad()
def test_sampling_equals_reference_sampling(model_and_batch, name, method):
    model, batch = model_and_batch
    torch.manual_seed(123)
    expected = reference_run(model, method, batch, 6, **SAMPLING).ids
    with optimized(model, method):
        torch.manual_seed(123)
        ids = model.generate(**batch, max_new_tokens=6, **SAMPLING)
    assert torch.equal(ids, expected)


@pytest.mark.parametrize(("name", "method"), FIRST_VARIANTS, ids=case_id)
@torch.no_grad()
def test_generation_stops_at_eos(model_and_batch, name, method):
    model, batch = model_and_batch
    greedy = reference_run(model, method, batch, 6).ids
    prompt = batch["input_ids"].shape[1]
    eos = int(greedy[0, prompt + 1])  # sample 0 ends after its second new token
    with optimized(model, method):
        ids = model.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    new = ids[0, prompt:]
    assert new[1] == eos and (new[2:] == model.generation_config.pad_token_id).all()
    for b in range(ids.shape[0]):
        row, expected = ids[b, prompt:], greedy[b, prompt : ids.shape[1]]
        stop = (expected == eos).nonzero()
        end = int(stop[0]) + 1 if len(stop) else len(expected)
        assert torch.equal(row[:end], expected[:end])


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
