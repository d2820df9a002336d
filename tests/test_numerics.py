"""Layer 2: numbers against the independent eager reference (graphprune.reference), and exactness."""

import pytest
import torch

import graphprune as gp
from graphprune.reference import fastv_reference, fastv_reference_generate
from graphprune.testing import llava_inputs

from .conftest import BATCH, LOGITS_RTOL, optimized, rel_error, slot_positions


@torch.no_grad()
def test_keep_one_equals_the_unmodified_model_exactly(llava, batch):
    expected = llava(**batch).logits
    expected_ids = llava.generate(**batch, max_new_tokens=6, do_sample=False)
    with optimized(llava, gp.FastV(k=2, keep=1.0)):
        assert torch.equal(llava(**batch).logits, expected)
        assert torch.equal(llava.generate(**batch, max_new_tokens=6, do_sample=False), expected_ids)


@torch.no_grad()
def test_inputs_without_visual_tokens_equal_the_unmodified_model_exactly(llava):
    text_only = llava_inputs(llava, [(7, 0, 3), (4, 0, 2)])
    expected = llava(**text_only).logits
    expected_ids = llava.generate(**text_only, max_new_tokens=5, do_sample=False)
    with optimized(llava, gp.FastV(k=2, keep=0.25)):
        assert torch.equal(llava(**text_only).logits, expected)
        assert torch.equal(llava.generate(**text_only, max_new_tokens=5, do_sample=False), expected_ids)


def _assert_clear_cut(reference, batch, keep):
    """The test is only meaningful if the top-k cut is far from ties: check the score gap there."""
    visual = batch["input_ids"] == 3
    for b in range(visual.shape[0]):
        scores = reference.scores[b][visual[b]].sort(descending=True).values
        n = len(reference.kept[b])
        if 0 < n < len(scores):
            assert scores[n - 1] - scores[n] > 1e-5 * scores[0], f"sample {b}: near-tie at the cut"


@pytest.mark.parametrize("query", ["last", "mean"])
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("k", [1, 2, 3])
@torch.no_grad()
def test_pass_equals_reference(llava, batch, k, keep, query):
    method = gp.FastV(k=k, keep=keep, query=query)
    reference = fastv_reference(llava, method, **batch)
    _assert_clear_cut(reference, batch, keep)
    expected_ids = fastv_reference_generate(llava, method, **batch, max_new_tokens=5)
    with optimized(llava, method):
        logits = llava(**batch).logits
        report = gp.explain(llava, **batch)
        ids = llava.generate(**batch, max_new_tokens=5, do_sample=False)
        positions = slot_positions(llava)
    for b in range(len(BATCH)):
        assert torch.equal(report.kept[b], reference.kept[b]), f"sample {b}"
        slots = logits[b, -len(positions[b]) :]  # valid slots are the last ones
        assert rel_error(slots, reference.logits[b, positions[b]]) <= LOGITS_RTOL, f"sample {b}"
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)


@torch.no_grad()
def test_eager_attention_model_equals_reference(llava_eager):
    inputs = llava_inputs(llava_eager, BATCH, seed=3)
    method = gp.FastV(k=2, keep=0.5)
    reference = fastv_reference(llava_eager, method, **inputs)
    expected_ids = fastv_reference_generate(llava_eager, method, **inputs, max_new_tokens=5)
    with optimized(llava_eager, method):
        logits = llava_eager(**inputs).logits
        report = gp.explain(llava_eager, **inputs)
        ids = llava_eager.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert [kept.tolist() for kept in report.kept] == [kept.tolist() for kept in reference.kept]
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)


@pytest.mark.parametrize("query", ["last", "mean"])
@torch.no_grad()
def test_a_padded_batch_gives_each_sample_what_it_gives_alone(llava, batch, query):
    method = gp.FastV(k=2, keep=0.5, query=query)
    with optimized(llava, method):
        logits = llava(**batch).logits[:, -1]
        kept = gp.explain(llava, **batch).kept
        ids = llava.generate(**batch, max_new_tokens=5, do_sample=False)
        pad = batch["attention_mask"].shape[1] - batch["attention_mask"].sum(dim=1)
        for b, sample in enumerate(BATCH):
            alone = {
                "input_ids": batch["input_ids"][b : b + 1, pad[b] :],
                "attention_mask": batch["attention_mask"][b : b + 1, pad[b] :],
            }
            images_before = sum(n for _, n, _ in BATCH[:b])
            if sample[1]:
                alone["pixel_values"] = batch["pixel_values"][images_before : images_before + sample[1]]
            assert rel_error(llava(**alone).logits[0, -1], logits[b]) <= LOGITS_RTOL
            assert torch.equal(gp.explain(llava, **alone).kept[0] + pad[b], kept[b])
            alone_ids = llava.generate(**alone, max_new_tokens=5, do_sample=False)
            assert torch.equal(alone_ids[0, -5:], ids[b, -5:])


@torch.no_grad()
def test_cache_lengths_per_layer(llava, batch):
    method = gp.FastV(k=2, keep=0.5)
    seq_len = batch["input_ids"].shape[1]
    real = batch["attention_mask"].sum(dim=1)
    visual = (batch["input_ids"] == 3).sum(dim=1)
    pruned = int((real - visual + torch.tensor([8, 16, 0])).max())  # ceil(0.5 * 16), ceil(0.5 * 32), 0
    with optimized(llava, method):
        cache = llava(**batch, use_cache=True).past_key_values
        assert [layer.keys.shape[2] for layer in cache.layers] == [seq_len, seq_len, pruned, pruned]
        report = gp.explain(llava, **batch)
        actual_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        assert report.kv_bytes_after == actual_bytes < report.kv_bytes_before
        out = llava.generate(**batch, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        lengths = [layer.keys.shape[2] for layer in out.past_key_values.layers]
        assert lengths == [seq_len + 3] * 2 + [pruned + 3] * 2  # the last new token is not fed back


@torch.no_grad()
def test_restore_is_exact(llava, batch):
    state = {name: tensor.clone() for name, tensor in llava.state_dict().items()}
    expected = llava(**batch).logits
    gp.optimize(llava, gp.FastV(k=1, keep=0.25))
    assert not torch.equal(llava(**batch).logits[:, -1], expected[:, -1])
    gp.restore(llava)
    assert not {"forward", "generate"} & set(vars(llava)) and "forward" not in vars(llava.model.language_model)
    assert not hasattr(llava, "_graphprune")
    assert torch.equal(llava(**batch).logits, expected)
    assert all(torch.equal(tensor, state[name]) for name, tensor in llava.state_dict().items())


@torch.no_grad()
def test_sampling_equals_reference_sampling(llava, batch):
    method = gp.FastV(k=2, keep=0.5)
    torch.manual_seed(123)
    expected = fastv_reference_generate(llava, method, **batch, max_new_tokens=6, sample=True)
    with optimized(llava, method):
        torch.manual_seed(123)
        ids = llava.generate(**batch, max_new_tokens=6, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    assert torch.equal(ids, expected)


@torch.no_grad()
def test_generation_stops_at_eos(llava, batch):
    method = gp.FastV(k=2, keep=0.5)
    greedy = fastv_reference_generate(llava, method, **batch, max_new_tokens=6)
    prompt = batch["input_ids"].shape[1]
    eos = int(greedy[0, prompt + 1])  # sample 0 ends after its second new token
    with optimized(llava, method):
        ids = llava.generate(**batch, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    new = ids[0, prompt:]
    assert new[1] == eos and (new[2:] == llava.generation_config.pad_token_id).all()
    for b in range(ids.shape[0]):
        row, expected = ids[b, prompt:], greedy[b, prompt : ids.shape[1]]
        stop = (expected == eos).nonzero()
        end = int(stop[0]) + 1 if len(stop) else len(expected)
        assert torch.equal(row[:end], expected[:end])
