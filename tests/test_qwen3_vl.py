"""Qwen3-VL beyond the contract suite (which runs FastV k=1, 2, 3 and the MoE model against the reference):
DeepStack's per-layer features enter the prefill graph as inputs with a sequence axis, and FastV gathers exactly
those that layers >= k read; the MoE decoder's flattened token counts follow the pruned length; one compiled case.
"""

import copy

import pytest
import torch

import graphprune as gp
from graphprune import optimized
from graphprune.capture import capture_prefill, deepstack_names
from graphprune.models import adapter_for
from graphprune.passes import fastv
from graphprune.reference import fastv_reference, fastv_reference_generate
from graphprune.testing import qwen3_vl_inputs, tiny_qwen3_vl

from .helpers import LOGITS_RTOL, QWEN_SAMPLES, rel_error


@pytest.fixture(scope="module")
def qwen3_vl(family_models):
    return family_models("Qwen3VLForConditionalGeneration")


@pytest.fixture(scope="module")
def captured(qwen3_vl):
    adapter = adapter_for(qwen3_vl)
    layout = adapter.layout(qwen3_vl)
    return capture_prefill(adapter.decoder(qwen3_vl), layout), layout


@torch.no_grad()
def test_captured_prefill_adds_deepstack_inputs_as_the_model_does(qwen3_vl, captured):
    """The graph's DeepStack inputs (features at the visual positions, zeros elsewhere) give the decoder's output
    for HF's compact features exactly; the features are not negligible."""
    gm, layout = captured
    assert layout.deepstack_layers == 3 and deepstack_names(layout) == ("deepstack_0", "deepstack_1", "deepstack_2")
    decoder = qwen3_vl.model.language_model
    embeds = torch.randn(2, 9, decoder.config.hidden_size)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    positions = torch.arange(9).expand(3, 2, 9)
    visual = torch.zeros(2, 9, dtype=torch.bool)
    visual[0, 2:6], visual[1, 4:7] = True, True
    features = [torch.randn(int(visual.sum()), decoder.config.hidden_size) for _ in range(3)]
    dense = [torch.zeros_like(embeds).index_put((visual,), f) for f in features]
    hidden, *_ = gm(embeds, mask, positions, *dense)
    kwargs = dict(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
    expected = decoder(**kwargs, visual_pos_masks=visual, deepstack_visual_embeds=features).last_hidden_state
    assert torch.equal(hidden[mask.bool()], expected[mask.bool()])
    assert rel_error(decoder(**kwargs).last_hidden_state[mask.bool()], expected[mask.bool()]) > 0.1


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fastv_gathers_the_deepstack_inputs_that_layers_from_k_read(captured, k):
    """Layer i adds DeepStack input i to its output, so layers >= k read inputs k .. 2: with k below (1) or at (2)
    the last DeepStack layer (2), each of those is read through one gather to the kept positions; the inputs
    read before the cut, and all of them with k above it (3), are not gathered."""
    gm, layout = captured
    gm = fastv(copy.deepcopy(gm), gp.FastV(k=k))
    for i, name in enumerate(deepstack_names(layout)):
        users = next(node for node in gm.graph.nodes if node.name == name).users
        readers = [user.name for user in users if user.target is not torch.ops.aten.sym_size.int]  # not its length
        if i >= k:
            assert readers == [f"graphprune_gather_{name}"], name
        else:
            assert len(readers) == 1 and not readers[0].startswith("graphprune_"), name


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
@torch.no_grad()
def test_moe_decoder_token_counts_follow_the_pruned_length(family_models):
    """The MoE layers flatten batch x sequence (x experts per token) into one count; after the cut those counts
    are the pruned length's (inserted ``graphprune_scaled_*``; the contract suite checks the numbers). Router
    logits, which the graphs do not return, are refused in one line."""
    model = family_models("Qwen3VLMoeForConditionalGeneration")
    inputs = qwen3_vl_inputs(model, QWEN_SAMPLES)
    with optimized(model, gp.FastV(k=2)):
        graph = model._graphprune.decoder.prefill_graph.graph
        assert any(node.name.startswith("graphprune_scaled_") for node in graph.nodes)
        assert model(**inputs).router_logits is None
        with pytest.raises(ValueError, match=r"^graphprune's pruned decoder does not return output_router_logits"):
            model(**inputs, output_router_logits=True)


@pytest.mark.compile
@torch.no_grad()
def test_compiled_prefill_and_decode_equal_reference(qwen3_vl):
    """k=1: DeepStack inputs 1 and 2 gathered inside the compiled prefill graph."""
    inputs = qwen3_vl_inputs(qwen3_vl, QWEN_SAMPLES[:2])
    method = gp.FastV(k=1, keep=0.5)
    reference = fastv_reference(qwen3_vl, method, **inputs)
    expected_ids = fastv_reference_generate(qwen3_vl, method, **inputs, max_new_tokens=4)
    with optimized(qwen3_vl, method, compile=True):
        logits = qwen3_vl(**inputs).logits
        ids = qwen3_vl.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert isinstance(qwen3_vl._graphprune.decoder.graphs.runners()[0], torch._dynamo.eval_frame.OptimizedModule)
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
    assert torch.equal(ids, expected_ids)


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
@torch.no_grad()
def test_explain_reports_the_cut(qwen3_vl):
    """k=3, above the last DeepStack layer: nothing to gather for DeepStack, one layer pruned (the ONNX export:
    test_export_qwen3_vl.py)."""
    inputs = qwen3_vl_inputs(qwen3_vl, QWEN_SAMPLES)
    with optimized(qwen3_vl, gp.FastV(k=3, keep=0.5)):
        report = gp.explain(qwen3_vl, **inputs)
    assert report.n_visual == [16, 24, 0] and [len(kept) for kept in report.kept] == [8, 12, 0]
    assert report.flops_after < report.flops_before and report.kv_bytes_after < report.kv_bytes_before


@torch.no_grad()
def test_more_deepstack_features_than_decoder_layers():
    """Two decoder layers, three DeepStack features: HF skips the third, and so does the prefill graph."""
    model = tiny_qwen3_vl(num_layers=2, deepstack_layers=3)
    assert adapter_for(model).layout(model).deepstack_layers == 2
    inputs = qwen3_vl_inputs(model, QWEN_SAMPLES[:1])
    method = gp.FastV(k=1, keep=0.5)
    reference = fastv_reference(model, method, **inputs)
    with optimized(model, method):
        logits = model(**inputs).logits
    assert rel_error(logits[:, -1], reference.logits[:, -1]) <= LOGITS_RTOL
