"""torch.compile (inductor) of the pruned graphs: one case per path (prefill, decode)."""

import pytest
import torch

import graphprune as gp
from graphprune.reference import fastv_reference, fastv_reference_generate

from .conftest import LOGITS_RTOL, optimized, rel_error


@pytest.mark.compile
@torch.no_grad()
def test_compiled_prefill_and_decode_equal_reference(llava, batch):
    method = gp.FastV(k=2, keep=0.5)
    reference = fastv_reference(llava, method, **batch)
    expected_ids = fastv_reference_generate(llava, method, **batch, max_new_tokens=4)
    with optimized(llava, method, compile=True):
        logits = llava(**batch).logits
        ids = llava.generate(**batch, max_new_tokens=4, do_sample=False)
        assert isinstance(llava._graphprune.decoder._prefill, torch._dynamo.eval_frame.OptimizedModule)
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)
