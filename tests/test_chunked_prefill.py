"""A prompt fed in parts (``generate(prefill_chunk_size=...)``, or a user's own forwards) is never ranked on a part:
refused with a one-line error where the method prunes, the unmodified model's result where it does not."""

from __future__ import annotations

import copy

import pytest
import torch

import graphprune as gp
from graphprune.testing import llava_inputs, tiny_llava

from .helpers import BATCH

STEPS = 4


@pytest.fixture(scope="module")
def models():
    """The unmodified tiny LLaVA, pruned (keep 0.5) and at keep=1.0."""
    model = tiny_llava()
    pruned = gp.optimize(copy.deepcopy(model), gp.FastV(k=2, keep=0.5))
    return model, pruned, gp.optimize(copy.deepcopy(model), gp.FastV(k=2, keep=1.0))


@pytest.fixture(scope="module")
def inputs(models):
    return llava_inputs(models[0], BATCH)


def test_chunked_prefill_is_refused_when_pruning(models, inputs):
    with pytest.raises(ValueError, match="graphprune.*prefill_chunk_size"):
        models[1].generate(**inputs, max_new_tokens=STEPS, do_sample=False, prefill_chunk_size=8)


@torch.no_grad()
def test_chunked_prefill_at_keep_one_is_the_unmodified_model(models, inputs):
    model, _, keep_one = models
    want = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, prefill_chunk_size=8)
    assert torch.equal(keep_one.generate(**inputs, max_new_tokens=STEPS, do_sample=False, prefill_chunk_size=8), want)


def two_parts(model, split: int):
    """One sample (text, image, text, image, text) as two calls' inputs, cut at ``split``: ids, mask and images."""
    whole = llava_inputs(model, [(2, 2, 3)])
    ids, mask, images = whole["input_ids"], whole["attention_mask"], whole["pixel_values"]
    first_images = int((ids[:, :split] == model.config.image_token_id).sum()) // 16
    first = {"input_ids": ids[:, :split], "attention_mask": mask[:, :split]}
    second = {"input_ids": ids[:, split:], "attention_mask": mask}
    if first_images:
        first["pixel_values"] = images[:first_images]
    second["pixel_values"] = images[first_images:]
    return first, second


@torch.no_grad()
@pytest.mark.parametrize("split", [1, 19], ids=["text-first", "image-first"])
def test_prompt_in_two_forwards_with_visual_tokens_in_the_second_is_refused(models, split):
    """The first forward (text only: the cache is not graphprune's; or one image: pruned) does not see the second's
    visual tokens, so ranking there would rank on part of the prompt."""
    pruned = models[1]
    first, second = two_parts(pruned, split)
    out = pruned(**first, use_cache=True)
    with pytest.raises(ValueError, match="graphprune.*visual tokens.*prompt"):
        pruned(**second, past_key_values=out.past_key_values, use_cache=True)


@torch.no_grad()
def test_prompt_in_two_forwards_at_keep_one_is_the_unmodified_model(models):
    model, _, keep_one = models
    first, second = two_parts(model, 19)
    want = model(**second, past_key_values=model(**first, use_cache=True).past_key_values).logits
    got = keep_one(**second, past_key_values=keep_one(**first, use_cache=True).past_key_values).logits
    assert torch.equal(got, want)
