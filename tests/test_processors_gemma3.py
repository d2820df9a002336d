"""Gemma 3's FastV on inputs made by its real HF processor, as users build it: ``Gemma3Processor`` (PIL image
processor ``Gemma3ImageProcessorPil``, the WordLevel tokenizer with Gemma's ``<start_of_image>``,
``<image_soft_token>`` and ``<end_of_image>``) saved and loaded back with ``AutoProcessor`` (transformers 5.23 and
5.17 alike: no torchvision needed). Checked against Gemma 3's own reference (``reference/fastv_gemma3.py``), not
the contract suite's: keep=1 equals the unmodified model exactly; the pass equals the reference on kept sets,
logits at the positions it keeps and greedy tokens past the sliding window."""

from __future__ import annotations

import pytest
import torch

import graphprune as gp
from graphprune.families.gemma3.testing import BOI_TOKEN_ID, EOI_TOKEN_ID
from graphprune.reference.fastv_gemma3 import fastv_gemma3_reference, fastv_gemma3_reference_generate
from graphprune.testing import IMAGE_TOKEN_ID, tiny_gemma3

from .test_gemma3 import METHOD, STEPS, _pass_logits_at_kept, _same_kept

pytest.importorskip("PIL", reason="the processor tests need Pillow (in the dev extra)")

from transformers import AutoProcessor  # noqa: E402

from graphprune.tiny_checkpoints import random_image, save_gemma3_processor  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.versions]  # the full tier; and with the lowest transformers (.ci/run)

PROMPTS = [
    "w9 w10 <start_of_image> w11 <start_of_image> w12 w13",  # two images
    "w20 <start_of_image> w30 w31",  # one
    "w40 w41 w42",  # text only
]


@pytest.fixture(scope="module")
def model():
    return tiny_gemma3(seed=2)


@pytest.fixture(scope="module")
def inputs(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3")
    save_gemma3_processor(model.config, path)
    images = [[random_image(0, 40), random_image(1, 16, 50)], [random_image(2, 32)], []]
    processor = AutoProcessor.from_pretrained(path)
    return dict(processor(text=PROMPTS, images=images, return_tensors="pt", padding=True, padding_side="left"))


def test_processor_makes_what_the_tiny_model_expects(model, inputs):
    """Per image: ``<start_of_image>``, ``mm_tokens_per_image`` image tokens, ``<end_of_image>``; token types 1 at
    exactly the image tokens; one image per pixel entry, at the tower's size; left padding."""
    config, ids = model.config, inputs["input_ids"]
    assert [config.boi_token_index, config.image_token_index, config.eoi_token_index] == [
        BOI_TOKEN_ID,
        IMAGE_TOKEN_ID,
        EOI_TOKEN_ID,
    ]
    tokens = config.mm_tokens_per_image
    assert (ids == IMAGE_TOKEN_ID).sum(dim=1).tolist() == [2 * tokens, tokens, 0]
    assert (ids == BOI_TOKEN_ID).sum(dim=1).tolist() == (ids == EOI_TOKEN_ID).sum(dim=1).tolist() == [2, 1, 0]
    for row in ids:
        for start in (row == BOI_TOKEN_ID).nonzero().flatten().tolist():
            assert row[start + 1 : start + 2 + tokens].tolist() == [IMAGE_TOKEN_ID] * tokens + [EOI_TOKEN_ID]
    assert torch.equal(inputs["token_type_ids"], (ids == IMAGE_TOKEN_ID).long())
    side = config.vision_config.image_size
    assert inputs["pixel_values"].shape == (3, 3, side, side)
    assert not inputs["attention_mask"][:, -1].eq(0).any() and inputs["attention_mask"][1:, 0].eq(0).all()
    assert ids.shape[1] > config.text_config.sliding_window


@torch.no_grad()
def test_keep_one_is_the_unmodified_model_bit_exact(model, inputs):
    want = model(**inputs).logits
    want_ids = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
    with gp.optimized(model, gp.FastV(k=2, keep=1.0)):
        assert torch.equal(model(**inputs).logits, want)
        assert torch.equal(model.generate(**inputs, max_new_tokens=STEPS, do_sample=False), want_ids)


@torch.no_grad()
def test_pass_equals_reference_kept_logits_and_greedy_tokens(model, inputs):
    reference = fastv_gemma3_reference(model, METHOD, **inputs)
    ids, step_logits = fastv_gemma3_reference_generate(model, METHOD, max_new_tokens=STEPS, **inputs)
    plain = model(**inputs).logits
    with gp.optimized(model, METHOD):
        logits, _ = _pass_logits_at_kept(model, model(**inputs).logits)
        report = gp.explain(model, **inputs)
        out = model.generate(
            **inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    assert [len(kept) for kept in report.kept] == [4, 2, 0] and _same_kept(report.kept, reference.kept)
    shown = reference.key_visible
    torch.testing.assert_close(logits[shown], reference.logits[shown], rtol=1e-4, atol=1e-4)
    assert (plain[:2, -1] - logits[:2, -1]).abs().max() > 1e-3  # pruning changed what the images' prompts see
    assert torch.equal(out.sequences, ids)
    torch.testing.assert_close(torch.stack(out.logits, dim=1), step_logits, rtol=1e-4, atol=1e-4)
