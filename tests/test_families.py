"""The family registry and what is particular to a family: every registered class is in the contract suite's
``FAMILIES`` (or has its own suite), an unsupported model's error lists them, each batch is varied enough, and
M-RoPE decode steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import graphprune as gp
from graphprune import optimized
from graphprune.families import FAMILIES as FAMILY_RECORDS
from graphprune.models import adapter_for, adapters, supported_classes
from graphprune.reference import fastv_reference, fastv_reference_generate
from graphprune.testing import family_modules

from .helpers import FAMILIES, LOGITS_RTOL, rel_error

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)

FASTV_FAMILIES = [name for name, family in FAMILIES.items() if isinstance(family.methods[0], gp.FastV)]
MROPE_FAMILIES = [
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
]
NEW_TOKENS = 5


# classes whose rules the contract suite's reference lacks, with the test module that has their own: their family's
# testing.OWN_SUITE
OWN_SUITES = {
    name: module.OWN_SUITE
    for module, family in zip(family_modules(), FAMILY_RECORDS, strict=True)
    if hasattr(module, "OWN_SUITE")
    for name in family.model_classes
}


def test_every_registered_class_is_in_the_contract_suite():
    tested = set(FAMILIES) | set(OWN_SUITES)
    missing = [name for adapter in adapters() for name in adapter.model_classes if name not in tested]
    assert not missing, f"model classes without a test: {missing}; add them to their family's testing.CONTRACT"
    assert set(supported_classes()) == tested
    assert all((Path(__file__).parent / module).exists() for module in OWN_SUITES.values())


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


@pytest.mark.parametrize("name", FASTV_FAMILIES)
def test_each_batch_has_samples_with_different_visual_counts_and_several_spans(family_models, name):
    model = family_models(name)
    batch = FAMILIES[name].inputs(model, FAMILIES[name].samples)
    visual = adapter_for(model).visual_mask(model, batch["input_ids"], None)
    counts = visual.sum(dim=1).tolist()
    assert len(set(counts)) == len(counts), f"visual counts {counts}"
    assert max(_spans(row) for row in visual) >= 2


@pytest.mark.parametrize(
    "name", [MROPE_FAMILIES[0], *(pytest.param(name, marks=pytest.mark.slow) for name in MROPE_FAMILIES[1:])]
)
@torch.no_grad()
def test_mrope_decode_steps_without_position_ids_continue_from_rope_deltas(family_models, name):
    """A hand-written decode loop passes no position ids: the model derives them from its ``rope_deltas``
    and the cache length, which must stay the unpruned length although layers >= k cache fewer positions.

    One unpadded sample with an image, no attention mask in the decode steps. transformers 5.23 itself
    fails with a mask (it derives positions for the whole sequence, not the new tokens), and after a
    Qwen2.5-VL video its ``rope_deltas`` continue from the largest (time-scaled) position where
    ``generate`` continues from the last one, so only an image sample has one right answer.
    """
    family = FAMILIES[name]
    model = family_models(name)
    inputs = family.inputs(model, family.samples[:1], seed=0)
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
