"""Model coverage: FastV's LLaVA tests (tests/test_numerics.py) for every other registered family.

Each family is a tiny random-weight model of the real transformers class and a left-padded batch
whose samples have different visual counts (one without any): LLaVA-NeXT with any-resolution images
(crops and newlines, several images, several spans), Video-LLaVA with images and 8-frame videos,
Qwen2-VL and Qwen2.5-VL with M-RoPE positions, images of different grids and a video.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import graphprune as gp
from graphprune.models import ADAPTERS, adapter_for, supported_classes
from graphprune.reference import fastv_reference, fastv_reference_generate
from graphprune.testing import (
    llava_next_inputs,
    qwen2_vl_inputs,
    tiny_llava_next,
    tiny_qwen2_vl,
    tiny_video_llava,
    video_llava_inputs,
)

from .conftest import LOGITS_RTOL, optimized, rel_error, slot_positions


@dataclass(frozen=True)
class Family:
    build: Callable  # () -> model
    inputs: Callable  # (model, samples, seed=...) -> inputs; sample i alone is inputs(model, [samples[i]], seed=i)
    samples: list  # the batch, in the inputs builder's sample format


QWEN_SAMPLES = [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3), (5, [], [], 2)]  # 16 | 8 + 16 video | 0 visual
FAMILIES = {
    # 52 | 88 + 46 (two images, two spans) | 0 visual tokens
    "LlavaNextForConditionalGeneration": Family(
        tiny_llava_next, llava_next_inputs, [(3, [(16, 32)], 4), (2, [(32, 32), (20, 12)], 3), (5, [], 2)]
    ),
    # 16 + 136 | 136 (video only) | 16 (image only)
    "VideoLlavaForConditionalGeneration": Family(
        tiny_video_llava, video_llava_inputs, [(3, 1, 1, 4), (2, 0, 1, 3), (5, 1, 0, 2)]
    ),
    "Qwen2VLForConditionalGeneration": Family(
        functools.partial(tiny_qwen2_vl, version="2"), qwen2_vl_inputs, QWEN_SAMPLES
    ),
    "Qwen2_5_VLForConditionalGeneration": Family(
        functools.partial(tiny_qwen2_vl, version="2.5"), qwen2_vl_inputs, QWEN_SAMPLES
    ),
}
# Registered classes tested in another module, by that module's name.
TESTED_ELSEWHERE = {
    "LlavaForConditionalGeneration": "test_numerics",
    "MllamaForConditionalGeneration": "test_cross_attention",
}
MROPE_FAMILIES = ["Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"]
NEW_TOKENS = 5


@pytest.fixture(scope="session")
def models():
    """One tiny model per family, built on first use."""
    return {}


@pytest.fixture(params=sorted(FAMILIES))
def family(request, models):
    """``(model, batch, family)``; the model is built once per session."""
    name = request.param
    spec = FAMILIES[name]
    if name not in models:
        models[name] = spec.build()
    model = models[name]
    assert type(model).__name__ == name
    return model, spec.inputs(model, spec.samples), spec


def test_every_registered_class_has_a_test():
    tested = set(FAMILIES) | set(TESTED_ELSEWHERE)
    missing = [name for adapter in ADAPTERS for name in adapter.model_classes if name not in tested]
    assert not missing, f"registered model classes without a test: {missing}; add them to FAMILIES"
    for module in TESTED_ELSEWHERE.values():
        importlib.import_module(f"tests.{module}")
    assert set(supported_classes()) == tested


def test_unsupported_model_error_lists_every_supported_class():
    model = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=64)
    ).eval()
    with pytest.raises(gp.UnsupportedModelError) as error:
        gp.optimize(model, gp.FastV())
    assert all(name in str(error.value) for name in supported_classes())
    assert "forward" not in vars(model) and not hasattr(model, "_graphprune")


def _spans(visual_row: torch.Tensor) -> int:
    starts = visual_row.int().diff(prepend=torch.zeros(1, dtype=torch.int))
    return int((starts == 1).sum())


def test_each_batch_has_samples_with_different_visual_counts_and_several_spans(family):
    model, batch, _ = family
    visual = adapter_for(model).visual_mask(model, batch["input_ids"], None)
    counts = visual.sum(dim=1).tolist()
    assert len(set(counts)) == len(counts), f"visual counts {counts}"
    assert max(_spans(row) for row in visual) >= 2


@torch.no_grad()
def test_keep_one_equals_the_unmodified_model_exactly(family):
    model, batch, _ = family
    expected = model(**batch).logits
    expected_ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    with optimized(model, gp.FastV(k=2, keep=1.0)):
        assert torch.equal(model(**batch).logits, expected)
        assert torch.equal(model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False), expected_ids)


def _assert_clear_cut(reference):
    """Only a cut far from a tie makes the comparison meaningful: check the score gap there."""
    for b in range(reference.visual.shape[0]):
        scores = reference.scores[b][reference.visual[b]].sort(descending=True).values
        n = len(reference.kept[b])
        if 0 < n < len(scores):
            assert scores[n - 1] - scores[n] > 1e-5 * scores[0], f"sample {b}: near-tie at the cut"


@pytest.mark.parametrize("method", [gp.FastV(k=2, keep=0.5), gp.FastV(k=1, keep=0.25, query="mean")], ids=str)
@torch.no_grad()
def test_pass_equals_reference(family, method):
    model, batch, _ = family
    reference = fastv_reference(model, method, **batch)
    _assert_clear_cut(reference)
    expected_ids = fastv_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS)
    with optimized(model, method):
        logits = model(**batch).logits
        report = gp.explain(model, **batch)
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
        positions = slot_positions(model)
    assert report.n_visual == reference.visual.sum(dim=1).tolist()
    for b in range(batch["input_ids"].shape[0]):
        assert torch.equal(report.kept[b], reference.kept[b]), f"sample {b}"
        slots = logits[b, -len(positions[b]) :]  # valid slots are the last ones
        assert rel_error(slots, reference.logits[b, positions[b]]) <= LOGITS_RTOL, f"sample {b}"
    assert torch.equal(ids, expected_ids)


@torch.no_grad()
def test_a_padded_batch_gives_each_sample_what_it_gives_alone(family):
    model, batch, spec = family
    with optimized(model, gp.FastV(k=2, keep=0.5)):
        logits = model(**batch).logits[:, -1]
        kept = gp.explain(model, **batch).kept
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
        pad = batch["attention_mask"].shape[1] - batch["attention_mask"].sum(dim=1)
        for b, sample in enumerate(spec.samples):
            alone = spec.inputs(model, [sample], seed=b)
            assert torch.equal(alone["input_ids"][0], batch["input_ids"][b, pad[b] :])
            assert rel_error(model(**alone).logits[0, -1], logits[b]) <= LOGITS_RTOL, f"sample {b}"
            assert torch.equal(gp.explain(model, **alone).kept[0] + pad[b], kept[b]), f"sample {b}"
            alone_ids = model.generate(**alone, max_new_tokens=NEW_TOKENS, do_sample=False)
            assert torch.equal(alone_ids[0, -NEW_TOKENS:], ids[b, -NEW_TOKENS:]), f"sample {b}"


@pytest.mark.parametrize("name", MROPE_FAMILIES)
@torch.no_grad()
def test_mrope_decode_steps_without_position_ids_continue_from_rope_deltas(models, name):
    """A hand-written decode loop passes no position ids: the model derives them from its ``rope_deltas``
    and the cache length, which must stay the unpruned length although layers >= k cache fewer positions.

    One unpadded sample with an image, no attention mask in the decode steps. transformers 5.23 itself
    fails with a mask (it derives positions for the whole sequence, not the new tokens), and after a
    Qwen2.5-VL video its ``rope_deltas`` continue from the largest (time-scaled) position where
    ``generate`` continues from the last one, so only an image sample has one right answer.
    """
    spec = FAMILIES[name]
    model = models.setdefault(name, spec.build())
    inputs = spec.inputs(model, spec.samples[:1], seed=0)
    method = gp.FastV(k=2, keep=0.5)
    expected = fastv_reference_generate(model, method, **inputs, max_new_tokens=NEW_TOKENS)
    positions = fastv_reference(model, method, **inputs).position_ids
    visual = inputs["mm_token_type_ids"].bool()
    assert positions.max() + 1 < visual.shape[1], "M-RoPE positions should advance by less than the visual count"
    assert not torch.equal(positions[1][visual], positions[2][visual]), "height and width rows should differ"
    with optimized(model, method):
        generated = model.generate(
            **inputs, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        out = model(**inputs, use_cache=True)
        ids = inputs["input_ids"]
        for step in range(NEW_TOKENS):
            logits = out.logits[:, -1]
            assert rel_error(logits, generated.logits[step]) <= LOGITS_RTOL, f"new token {step}"
            ids = torch.cat([ids, logits.argmax(dim=-1, keepdim=True)], dim=1)
            out = model(input_ids=ids[:, -1:], past_key_values=out.past_key_values, use_cache=True)
    assert torch.equal(generated.sequences, expected)
    assert torch.equal(ids, expected)
