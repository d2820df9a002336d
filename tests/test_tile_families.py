"""What is particular to the tile and any-resolution families (LLaVA-OneVision, InternVL, Idefics3, SmolVLM),
beyond the contract suite that runs them all (``helpers.FAMILIES``): torch.compile of their one new decoder kind
(Qwen2, LLaVA-OneVision's and InternVL's; Idefics3's and SmolVLM's Llama is LLaVA's, compiled in test_compile)."""

import pytest
import torch

import graphprune as gp
from graphprune import optimized
from graphprune.reference import fastv_reference, fastv_reference_generate

from .helpers import FAMILIES, LOGITS_RTOL, rel_error

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

INTERNVL = "InternVLForConditionalGeneration"


@pytest.mark.compile
@torch.no_grad()
def test_compiled_qwen2_decoder_prefill_and_decode_equal_reference(family_models):
    family = FAMILIES[INTERNVL]
    model = family_models(INTERNVL)
    inputs = family.inputs(model, family.samples[:2])
    method = gp.FastV(k=2, keep=0.5)
    reference = fastv_reference(model, method, **inputs)
    expected_ids = fastv_reference_generate(model, method, **inputs, max_new_tokens=4)
    with optimized(model, method, compile=True):
        logits = model(**inputs).logits
        ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert isinstance(model._graphprune.decoder.graphs.runners()[0], torch._dynamo.eval_frame.OptimizedModule)
    assert type(model.model.language_model).__name__ == "Qwen2Model"
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)
