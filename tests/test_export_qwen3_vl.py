"""Qwen3-VL export: the vision tower per segment with its DeepStack features and the position grid resampled on the
host, the embed graph filling the prefill graph's DeepStack inputs, per-frame M-RoPE positions, FastV inside the
prefill graph; ONNX Runtime tokens equal to the optimised PyTorch model. Qwen3-VL-MoE is refused."""

import itertools

import pytest
import torch
from transformers.vision_utils import get_vision_interpolation_indices_and_weights

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune import optimized  # noqa: E402
from graphprune.export.mrope import token_types  # noqa: E402
from graphprune.export.qwen2_vl_vision import vision_positions  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.families.qwen3_vl.export import Qwen3VLExport, position_table  # noqa: E402
from graphprune.runtime import optimized_state  # noqa: E402
from graphprune.testing import qwen3_vl_inputs, tiny_qwen3_vl  # noqa: E402

from .helpers import LOGITS_RTOL, assert_ort_equals_generate, export_fixtures, rel_error  # noqa: E402
from .onnx_graph import assert_profiles_ordered, top_k_constants  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "embed", "prefill", "decode")
# (text_before, image grids, video grids, text_after): 16 | 8 + 8 (a video of 2 frames) | 0 visual tokens, left-padded
SAMPLES = [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(2, 4, 4)], 3), (5, [], [], 2)]


def build():
    """2 decoder layers, both with DeepStack features; layer 1 (pruned) reads them at the kept positions only."""
    return tiny_qwen3_vl(num_layers=2, deepstack_layers=2)


model, inputs, exported = export_fixtures(build, METHOD, lambda model: qwen3_vl_inputs(model, SAMPLES), "qwen3_vl")


@pytest.fixture(scope="module")
def twin():
    """The same tiny model (same seed), never optimised by this module's fixtures: the unmodified reference."""
    twin = build()
    assert all(torch.equal(a, b) for a, b in zip(twin.parameters(), build().parameters(), strict=True))
    return twin


def test_host_position_table_equals_hf_interpolation():
    """The learned 4x4 position grid resampled to grids smaller, larger and not square, as HF's vision tower does."""
    for h, w in ((2, 2), (4, 8), (8, 8), (6, 10)):
        expected = get_vision_interpolation_indices_and_weights(
            torch.tensor([[1, h, w]]), 4, mode="bilinear", align_corners=True, spatial_merge_size=2
        )
        actual = position_table(vision_positions(h, w, 2), h, w, 4)
        assert torch.equal(torch.from_numpy(actual[0]), expected[0]), (h, w)
        assert torch.equal(torch.from_numpy(actual[1]), expected[1]), (h, w)


def test_a_position_grid_resampled_otherwise_is_refused(twin, monkeypatch):
    """The host reproduces HF's bilinear, corner-aligned resampling only."""
    monkeypatch.setattr(twin.model.visual, "interpolation_mode", "bicubic")
    refused = r"^graphprune exports Qwen3-VL .* uses 'bicubic', align_corners=True: run it in PyTorch"
    with pytest.raises(ValueError, match=refused):
        Qwen3VLExport.layout(twin)


@torch.no_grad()
def test_segment_vision_graph_gives_the_towers_features_and_deepstack_features(model, inputs):
    """One run per image or video frame gives HF's merged features and DeepStack features, stacked per token."""
    layout, vision = Qwen3VLExport.layout(model), Qwen3VLExport.vision(model)
    other = qwen3_vl_inputs(model, [(1, [(6, 10), (2, 2)], [(3, 2, 4)], 1)])
    kinds = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))
    for batch, (pixels, grids) in itertools.product((inputs, other), kinds):
        segments = Qwen3VLExport.segments(batch[pixels].numpy(), batch[grids].numpy(), layout)
        actual = torch.cat([vision(*(torch.as_tensor(value) for value in feeds.values())) for feeds in segments])
        out = model.model.visual(batch[pixels], grid_thw=batch[grids])
        expected = torch.stack([out.pooler_output, *out.deepstack_features], dim=1)
        assert actual.shape == expected.shape == (len(expected), 3, 64), pixels
        assert rel_error(actual, expected) <= LOGITS_RTOL, pixels


def test_host_mrope_positions_equal_hf_get_rope_index(model, inputs):
    """Padding, images of two grids and a video whose frames are separate grids (Qwen3-VL's timestamps)."""
    expected, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    grids = (inputs["image_grid_thw"].numpy(), inputs["video_grid_thw"].numpy(), None)
    actual = Qwen3VLExport.positions(
        Qwen3VLExport.layout(model), inputs["mm_token_type_ids"].numpy(), inputs["attention_mask"].numpy(), *grids
    )
    assert torch.equal(torch.from_numpy(actual), expected)
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]  # the caller's grid is left as it was
    derived = token_types(inputs["input_ids"].numpy(), model.config.image_token_id, model.config.video_token_id)
    assert (derived == inputs["mm_token_type_ids"].numpy()).all()


def test_export_writes_deepstack_inputs_and_a_token_budget(exported):
    manifest = gp.export.Manifest.read(exported)
    assert sorted(manifest.graphs) == sorted(GRAPHS)
    assert manifest.family == "qwen3-vl" and manifest.model["position_grid"] == 4
    assert manifest.visual_budget == {"max_visual": 16, "top_k": 8}
    names = {graph: [spec["name"] for spec in manifest.graphs[graph]["inputs"]] for graph in GRAPHS}
    assert names["vision"] == ["pixel_values", "vision_position_ids", "interp_indices", "interp_weights"]
    assert manifest.graphs["vision"]["dynamic_axes"]["interp_indices"] == {"0": "patches"}  # any grid
    assert [spec["shape"] for spec in manifest.graphs["vision"]["outputs"]][0][1:] == [3, 64]  # merged + 2 DeepStack
    embed_outputs = [spec["name"] for spec in manifest.graphs["embed"]["outputs"]]
    assert embed_outputs == ["inputs_embeds", "visual_mask", "deepstack_0", "deepstack_1"]
    assert names["prefill"][:5] == ["inputs_embeds", "attention_mask", "position_ids", "deepstack_0", "deepstack_1"]
    assert "deepstack_0" not in names["decode"]
    assert top_k_constants(exported) == [[8]]
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph
    assert_profiles_ordered(trt_profiles(manifest, max_text=64, max_new_tokens=16))


def test_ort_greedy_tokens_and_prefill_logits_equal_pytorch(model, inputs, exported):
    assert_ort_equals_generate(model, inputs, exported)


def test_other_grids_and_batch_shapes_run_on_the_same_export(model, exported):
    """Grids the example does not hold (6x10, 2x2, a 3-frame video), batch 1 and 2, no mm_token_type_ids."""
    for samples in ([(4, [(6, 10)], [], 9)], [(1, [], [(3, 2, 4)], 2), (7, [(2, 2), (4, 4)], [], 1)]):
        other = qwen3_vl_inputs(model, samples, seed=5)
        expected = model.generate(**other, max_new_tokens=4, do_sample=False)
        del other["mm_token_type_ids"]  # the generator derives it from the placeholder ids
        assert torch.equal(gp.export.OrtGenerator(exported).generate(**other, max_new_tokens=4), expected)


def test_inputs_the_export_does_not_take_are_clear_errors(model, inputs, exported):
    generator = gp.export.OrtGenerator(exported)
    extra = r"^graphprune: a Qwen3-VL export takes .*; got also \['second_per_grid_ts'\]: leave them out"
    with pytest.raises(ValueError, match=extra):
        generator.generate(**inputs, second_per_grid_ts=torch.tensor([1.0]), max_new_tokens=1)
    over = qwen3_vl_inputs(model, [(2, [(8, 8), (2, 2)], [], 2)])  # 17 visual tokens
    with pytest.raises(ValueError, match="at most 16: export again with a larger max_visual_tokens"):
        generator.generate(**over, max_new_tokens=1)


def test_keep_one_export_gives_the_unmodified_model_s_tokens(twin, inputs, tmp_path):
    expected = twin.generate(**inputs, max_new_tokens=6, do_sample=False)
    with optimized(twin, gp.FastV(k=1, keep=1.0)):
        folder = gp.export.onnx(twin, tmp_path / "keep1", example_inputs=inputs)
    assert gp.export.Manifest.read(folder).visual_budget == {"max_visual": 16, "top_k": 16}
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=6), expected)


@torch.no_grad()
def test_unpruned_graphs_take_the_deepstack_inputs_and_give_the_unmodified_logits(model, inputs, twin):
    """``prune=False`` (the baseline): the same graphs without the pass, DeepStack inputs included (in PyTorch;
    writing the files is what every family shares)."""
    graphs, _ = Qwen3VLExport.export_graphs(model, optimized_state(model), inputs, None, prune=False)
    embed, prefill = graphs[1], graphs[2]
    assert prefill.inputs == ("inputs_embeds", "attention_mask", "position_ids", "deepstack_0", "deepstack_1")
    assert embed.outputs[2:] == ("deepstack_0", "deepstack_1") and embed.module(*embed.args)[2].abs().sum() > 0
    logits = twin(**inputs).logits[:, -1]
    assert rel_error(prefill.module(*prefill.args)[0], logits) <= LOGITS_RTOL


def test_qwen3_vl_moe_export_is_refused_in_one_line(tmp_path):
    moe = tiny_qwen3_vl(moe=True, num_layers=2, deepstack_layers=2)
    with optimized(moe, METHOD), pytest.raises(gp.UnsupportedModelError) as raised:
        gp.export.onnx(moe, tmp_path / "out", example_inputs=qwen3_vl_inputs(moe, SAMPLES[:1]))
    message = str(raised.value)
    assert message.startswith("graphprune cannot export Qwen3VLMoeForConditionalGeneration: its experts run")
    assert "grouped_mm_fallback" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
