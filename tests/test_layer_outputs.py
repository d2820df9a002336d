"""``output_attentions`` / ``output_hidden_states``: the unmodified model's where nothing is pruned (keep=1.0, a
prompt without visual tokens); a one-line refusal naming the option and ``graphprune.restore`` where it prunes."""

from __future__ import annotations

import copy

import pytest
import torch

import graphprune as gp
from graphprune.testing import llava_inputs, tiny_llava

from .helpers import BATCH

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

OUTPUTS = {"output_attentions": True, "output_hidden_states": True}


@pytest.fixture(scope="module")
def models():
    """Tiny eager LLaVA (it returns attentions), unmodified, pruned (keep 0.5) and at keep=1.0."""
    model = tiny_llava(attn_implementation="eager")
    pruned = gp.optimize(copy.deepcopy(model), gp.FastV(k=2, keep=0.5))
    return model, pruned, gp.optimize(copy.deepcopy(model), gp.FastV(k=2, keep=1.0))


def assert_same_outputs(got, want):
    assert len(got.attentions) == len(want.attentions) > 0
    assert len(got.hidden_states) == len(want.hidden_states) > 0
    for got_tensor, want_tensor in zip(
        got.attentions + got.hidden_states, want.attentions + want.hidden_states, strict=True
    ):
        assert torch.equal(got_tensor, want_tensor)
    assert torch.equal(got.logits, want.logits)


@torch.no_grad()
def test_layer_outputs_at_keep_one_are_the_unmodified_models(models):
    model, _, keep_one = models
    inputs = llava_inputs(model, BATCH)
    assert_same_outputs(keep_one(**inputs, **OUTPUTS), model(**inputs, **OUTPUTS))


@torch.no_grad()
def test_layer_outputs_without_visual_tokens_are_the_unmodified_models(models):
    model, pruned, _ = models
    inputs = llava_inputs(model, [(7, 0, 3), (4, 0, 2)])
    assert_same_outputs(pruned(**inputs, **OUTPUTS), model(**inputs, **OUTPUTS))


@torch.no_grad()
@pytest.mark.parametrize("option", sorted(OUTPUTS))
def test_layer_outputs_are_refused_where_the_model_prunes(models, option):
    pruned = models[1]
    with pytest.raises(ValueError, match=rf"^graphprune's pruned decoder does not return {option}.*restore\(model\)"):
        pruned(**llava_inputs(pruned, BATCH), **{option: True})
