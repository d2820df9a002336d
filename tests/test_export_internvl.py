"""InternVL export: the tile tower (InternViT, pixel shuffle, projector), tiles of several images ranked by FastV
inside the prefill graph, ONNX Runtime tokens equal to the optimised PyTorch model."""

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.testing import internvl_inputs, tiny_internvl  # noqa: E402

from .helpers import assert_ort_equals_generate, export_fixtures  # noqa: E402
from .onnx_graph import assert_profiles_ordered, top_k_constants  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "embed", "prefill", "decode")
# (text_before, tiles per image, text_after), 4 features per tile: 20 | 12 + 4 (two images) | 8 visual tokens
SAMPLES = [(3, [5], 4), (2, [3, 1], 3), (5, [2], 2)]

# Tiny InternVL, 2 layers (layer 1 pruned)
model, inputs, exported = export_fixtures(
    lambda: tiny_internvl(num_layers=2), METHOD, lambda model: internvl_inputs(model, SAMPLES), "internvl"
)


def test_export_writes_the_tile_tower_and_a_token_budget(exported):
    manifest = gp.export.Manifest.read(exported)
    assert sorted(manifest.graphs) == sorted(GRAPHS)
    assert manifest.family == "internvl"
    assert manifest.model["tokens_per_tile"] == 4
    assert manifest.visual_budget == {"max_visual": 20, "top_k": 10}
    assert manifest.graphs["vision"]["dynamic_axes"]["pixel_values"] == {"0": "tiles"}
    assert top_k_constants(exported) == [[10]]
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph
    assert_profiles_ordered(trt_profiles(manifest, max_text=64, max_new_tokens=16))


def test_ort_greedy_tokens_and_prefill_logits_equal_pytorch(model, inputs, exported):
    generator = assert_ort_equals_generate(model, inputs, exported)
    alone = internvl_inputs(model, [(1, [1, 2], 6)], seed=4)  # batch 1, other tile counts: dynamic axes
    expected = model.generate(**alone, max_new_tokens=4, do_sample=False)
    assert torch.equal(generator.generate(**alone, max_new_tokens=4), expected)


def test_more_visual_tokens_than_the_budget_is_a_clear_error(model, exported):
    with pytest.raises(ValueError, match="at most 20: export again with a larger max_visual_tokens"):
        gp.export.OrtGenerator(exported).generate(**internvl_inputs(model, [(1, [6], 1)]), max_new_tokens=1)
