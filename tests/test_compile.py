"""torch.compile (inductor) of the pruned graphs: one case per path (prefill, decode)."""

import pytest
import torch

import graphprune as gp
from graphprune import optimized
from graphprune.reference import (
    cross_attention_trim_reference,
    fastv_reference,
    fastv_reference_generate,
    trimmed_mask_mode,
)
from graphprune.testing import qwen2_vl_inputs, tiny_qwen2_vl

from .helpers import LOGITS_RTOL, rel_error

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)


def _qwen2_vl():
    """Qwen2-VL: M-RoPE positions [3, B, N], an image and a video of different grids, left padding."""
    model = tiny_qwen2_vl(version="2")
    return model, qwen2_vl_inputs(model, [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3)])


@pytest.mark.compile
@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
@torch.no_grad()
def test_compiled_prefill_and_decode_equal_reference(request, family):
    model, inputs = (
        (request.getfixturevalue("llava"), request.getfixturevalue("batch")) if family == "llava" else _qwen2_vl()
    )
    method = gp.FastV(k=2, keep=0.5)
    reference = fastv_reference(model, method, **inputs)
    expected_ids = fastv_reference_generate(model, method, **inputs, max_new_tokens=4)
    with optimized(model, method, compile=True):
        logits = model(**inputs).logits
        ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert isinstance(model._graphprune.decoder.graphs.runners()[0], torch._dynamo.eval_frame.OptimizedModule)
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)


@pytest.mark.compile
@pytest.mark.parametrize("select", ["head_union", "topk"])
@torch.no_grad()
def test_compiled_cross_attention_trim_equals_reference(mllama, mllama_batch, select):
    """topk compiles as one graph per step; head_union's data-dependent kept count splits the prefill graph."""
    method = gp.CrossAttentionTrim(keep=0.5, select=select)
    reference = cross_attention_trim_reference(mllama, method, **mllama_batch)
    with trimmed_mask_mode(mllama, reference.kept):
        expected = mllama(**mllama_batch).logits
        expected_ids = mllama.generate(**mllama_batch, max_new_tokens=4, do_sample=False)
    with optimized(mllama, method, compile=True):
        logits = mllama(**mllama_batch).logits
        ids = mllama.generate(**mllama_batch, max_new_tokens=4, do_sample=False)
    assert rel_error(logits[:, -1], expected[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)
