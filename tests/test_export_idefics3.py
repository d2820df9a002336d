"""SmolVLM / Idefics3 export: the tile tower (vision transformer, pixel-shuffle connector) on the real tiles of
``[B, tiles, 3, H, W]`` pixel values, FastV inside the prefill graph, ONNX Runtime tokens equal to PyTorch."""

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.testing import idefics3_inputs, tiny_idefics3  # noqa: E402

from .helpers import assert_ort_equals_generate, export_fixtures  # noqa: E402
from .onnx_graph import assert_profiles_ordered, top_k_constants  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

METHOD = gp.FastV(k=1, keep=0.5)
# (text_before, image grids, text_after), 4 features per tile: 2x2 + global | 1x1 and 1x2 + global | 1x1
SAMPLES = [(3, [(2, 2)], 4), (2, [(1, 1), (1, 2)], 3), (5, [(1, 1)], 2)]

# Tiny SmolVLM, 2 layers (layer 1 pruned)
model, inputs, exported = export_fixtures(
    lambda: tiny_idefics3(version="smolvlm", num_layers=2),
    METHOD,
    lambda model: idefics3_inputs(model, SAMPLES),
    "smolvlm",
)


def test_ort_greedy_tokens_and_prefill_logits_equal_pytorch(model, inputs, exported):
    manifest = gp.export.Manifest.read(exported)
    assert (manifest.family, manifest.model["tokens_per_tile"]) == ("idefics3", 4)
    assert manifest.visual_budget == {"max_visual": 20, "top_k": 10} and top_k_constants(exported) == [[10]]
    for graph in ("vision", "embed", "prefill", "decode"):
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph
    assert_profiles_ordered(trt_profiles(manifest, max_text=64, max_new_tokens=16))
    generator = assert_ort_equals_generate(model, inputs, exported)
    alone = idefics3_inputs(model, [(1, [(2, 1)], 6)], seed=4)  # batch 1, another grid
    alone["pixel_attention_mask"] = torch.ones(alone["pixel_values"].shape[:2] + alone["pixel_values"].shape[-2:])
    expected = model.generate(**alone, max_new_tokens=4, do_sample=False)
    assert torch.equal(generator.generate(**alone, max_new_tokens=4), expected)


def test_a_pixel_mask_that_hides_pixels_is_a_clear_error(model, inputs, exported):
    mask = torch.ones(inputs["pixel_values"].shape[:2] + inputs["pixel_values"].shape[-2:])
    mask[0, 0, :, -4:] = 0
    with pytest.raises(ValueError, match="attends every pixel of a tile; got a pixel_attention_mask that hides"):
        gp.export.OrtGenerator(exported).generate(**inputs, pixel_attention_mask=mask, max_new_tokens=1)
