"""Qwen2-VL and Qwen2.5-VL export: M-RoPE positions and vision segments on the host, FastV inside the
prefill graph, ONNX Runtime tokens equal to the optimised PyTorch model (images of different grids and
a video; Qwen2.5-VL with windowed vision attention and time-scaled video positions)."""

import itertools

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune import optimized  # noqa: E402
from graphprune.export.mrope import mrope_positions, token_types, video_intervals  # noqa: E402
from graphprune.export.qwen2_vl_vision import vision_graph, vision_segments  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.families.qwen2_vl.export import vision_layout  # noqa: E402
from graphprune.testing import qwen2_vl_inputs, tiny_qwen2_vl  # noqa: E402

from .helpers import LOGITS_RTOL, rel_error, unmodified_generate  # noqa: E402
from .onnx_graph import assert_profiles_ordered, top_k_constants  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.versions]  # the full tier; and with the lowest transformers (.ci/run)

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "embed", "prefill", "decode")
# (text_before, image grids, video grids, text_after): 16 | 8 + 16 (video) | 0 visual tokens, left-padded
SAMPLES = [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3), (5, [], [], 2)]
VERSIONS = {"2": "Qwen2VLForConditionalGeneration", "2.5": "Qwen2_5_VLForConditionalGeneration"}


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def model(request):
    """Tiny Qwen2-VL or Qwen2.5-VL, 2 layers (layer 1 pruned); optimised while its tests run."""
    model = tiny_qwen2_vl(version=request.param, num_layers=2)
    with optimized(model, METHOD):
        yield model


@pytest.fixture(scope="module")
def inputs(model):
    """``SAMPLES``; for Qwen2.5-VL the video lasts 1.6 s per temporal patch (``second_per_grid_ts``: a fraction
    that transformers 5.17 truncates before scaling, 5.23 after)."""
    inputs = qwen2_vl_inputs(model, SAMPLES)
    if vision_layout(model)["tokens_per_second"] is not None:
        inputs["second_per_grid_ts"] = torch.tensor([1.6])
    return inputs


@pytest.fixture(scope="module")
def exported(model, inputs, tmp_path_factory):
    """Validated against PyTorch on ``inputs`` by ``export.onnx`` itself."""
    return gp.export.onnx(model, tmp_path_factory.mktemp("export") / "qwen2_vl", example_inputs=inputs)


def test_host_mrope_positions_equal_hf_get_rope_index(model, inputs):
    """The host's positions (ONNX Runtime has no ``get_rope_index``) are HF's, padding, images and video included."""
    seconds = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    expected, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        inputs["image_grid_thw"],
        inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
        **seconds,
    )
    layout = vision_layout(model)
    intervals = video_intervals(
        layout["tokens_per_second"], inputs.get("second_per_grid_ts"), 1, layout["video_seconds"]
    )
    actual = mrope_positions(
        inputs["mm_token_type_ids"].numpy(),
        inputs["attention_mask"].numpy(),
        inputs["image_grid_thw"].numpy(),
        inputs["video_grid_thw"].numpy(),
        layout["spatial_merge_size"],
        intervals,
    )
    real = inputs["attention_mask"].bool().expand(3, -1, -1)
    assert torch.equal(torch.from_numpy(actual)[real], expected[real])
    assert torch.equal(torch.from_numpy(actual)[~real], torch.zeros_like(expected[~real]))
    video_times = expected[0, 1][inputs["mm_token_type_ids"][1] == 2].unique()
    steps = {"exact": [6, 6, 7], "whole": [4, 4, 4]}  # 4 tokens/s x 1.6 s: floor(6.4 t) (5.23), 4 t (5.17)
    assert video_times.diff().tolist() == (steps[layout["video_seconds"]] if intervals else [1, 1, 1])
    derived = token_types(inputs["input_ids"].numpy(), model.config.image_token_id, model.config.video_token_id)
    assert (derived == inputs["mm_token_type_ids"].numpy()).all()


def test_a_get_rope_index_video_rule_graphprune_cannot_reproduce_is_refused(model, monkeypatch):
    """Neither transformers 5.17's nor 5.23's rule (here: seconds rounded up): exporting would give other positions."""
    if vision_layout(model)["tokens_per_second"] is None:
        pytest.skip("Qwen2-VL does not scale video time")
    original = model.model.get_rope_index

    def seconds_rounded_up(*args, second_per_grid_ts, **kwargs):
        return original(*args, second_per_grid_ts=second_per_grid_ts.ceil(), **kwargs)

    monkeypatch.setattr(model.model, "get_rope_index", seconds_rounded_up)
    with pytest.raises(ValueError, match=r"^graphprune cannot reproduce .* install transformers>=5\.17,<5\.24"):
        vision_layout(model)


@torch.no_grad()
def test_segment_vision_graph_equals_the_models_vision_tower(model, inputs):
    """One vision run per image or temporal group (Qwen2.5-VL: windows from the host) gives what HF's
    vision tower gives for the whole batch."""
    layout, vision = vision_layout(model), vision_graph(model)
    assert (layout["vision_window"] is None) == (type(model).__name__ == VERSIONS["2"])
    ragged = qwen2_vl_inputs(model, [(1, [(6, 10), (2, 6)], [(2, 6, 2)], 1)])  # grids that windows do not tile
    kinds = (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw"))
    for batch, (pixels, grids) in itertools.product((inputs, ragged), kinds):
        segments = vision_segments(
            batch[pixels].numpy(), batch[grids].numpy(), layout["spatial_merge_size"], layout["vision_window"]
        )
        actual = torch.cat([vision(*(torch.as_tensor(value) for value in feeds.values())) for feeds in segments])
        expected = model.model.visual(batch[pixels], grid_thw=batch[grids])
        expected = getattr(expected, "pooler_output", expected)
        assert actual.shape == expected.shape and rel_error(actual, expected) <= LOGITS_RTOL, pixels


def test_export_writes_the_graphs_and_a_manifest_with_a_token_budget(model, exported):
    manifest = gp.export.Manifest.read(exported)
    assert sorted(manifest.graphs) == sorted(GRAPHS)
    assert manifest.family == "qwen2-vl" and manifest.model["class"] == type(model).__name__
    assert manifest.visual_budget == {"max_visual": 24, "top_k": 12}  # 8 image + 16 video tokens in sample 1
    assert manifest.first_pruned_layer == 1
    assert manifest.model["video_seconds"] == vision_layout(model)["video_seconds"]  # what OrtGenerator follows
    prefill, decode = manifest.graphs["prefill"], manifest.graphs["decode"]
    assert prefill["dynamic_axes"]["position_ids"] == {"1": "batch", "2": "sequence"}  # [3, B, N]: M-RoPE rows
    assert decode["dynamic_axes"]["position_ids"] == {"1": "batch", "2": "new_tokens"}
    assert prefill["dynamic_axes"]["present.1.key"]["2"] == "pruned_sequence"
    assert [spec["name"] for spec in manifest.graphs["embed"]["inputs"]] == [
        "input_ids",
        "image_features",
        "video_features",
    ]
    windows = ["window_index", "window_ids"] if manifest.model["vision_window"] else []
    assert [spec["name"] for spec in manifest.graphs["vision"]["inputs"]] == [
        "pixel_values",
        "vision_position_ids",
        *windows,
    ]
    assert top_k_constants(exported) == [[12]]  # ceil(0.5 * 24): no Shape feeds K


def test_every_graph_is_accepted_by_the_tensorrt_parser_rules(exported):
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph
    manifest = gp.export.Manifest.read(exported)
    low, opt, high = trt_profiles(manifest)["prefill"]["position_ids"]
    assert low[0] == opt[0] == high[0] == 3
    for max_text, max_new_tokens in ((512, 256), (8, 1)):
        assert_profiles_ordered(trt_profiles(manifest, max_text=max_text, max_new_tokens=max_new_tokens))
    assert "visual tokens (images and video frames)" in (exported / "TENSORRT.md").read_text()


def test_ort_greedy_tokens_equal_pytorch(model, inputs, exported):
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(exported).generate(**inputs, max_new_tokens=6), expected)


def test_ort_prefill_logits_match_pytorch(model, inputs, exported):
    out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True)
    logits = gp.export.OrtGenerator(exported).prefill_logits(**inputs)
    assert rel_error(logits, out.logits[0]) <= LOGITS_RTOL


def test_other_grids_and_batch_shapes_run_on_the_same_export(model, exported):
    """Grids and lengths other than the example's (6x10: windows that do not tile it), a video alone, no
    mm_token_type_ids: the axes are dynamic."""
    for samples in ([(4, [(4, 4)], [], 9)], [(1, [], [(2, 4, 4)], 2), (7, [(6, 10), (2, 4)], [], 1), (2, [], [], 5)]):
        inputs = qwen2_vl_inputs(model, samples, seed=5)
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        del inputs["mm_token_type_ids"]  # the generator derives it from the placeholder ids
        assert torch.equal(gp.export.OrtGenerator(exported).generate(**inputs, max_new_tokens=4), expected)


def test_more_visual_tokens_than_the_budget_is_a_clear_error(model, exported):
    generator = gp.export.OrtGenerator(exported)
    fits = qwen2_vl_inputs(model, [(2, [(8, 8)], [(2, 4, 4)], 2)])  # 16 + 8 = 24 fits; one more image does not
    assert generator.generate(**fits, max_new_tokens=1).shape == (1, fits["input_ids"].shape[1] + 1)
    over = qwen2_vl_inputs(model, [(2, [(8, 8), (2, 2)], [(2, 4, 4)], 2)])
    with pytest.raises(ValueError, match="at most 24: export again with a larger max_visual_tokens"):
        generator.generate(**over, max_new_tokens=1)


def test_inputs_that_do_not_fit_their_grids_are_clear_errors(model, exported):
    generator = gp.export.OrtGenerator(exported)
    inputs = qwen2_vl_inputs(model, [(2, [(8, 8)], [(2, 4, 4)], 2)])  # 16 image tokens, 64 patch rows
    with pytest.raises(ValueError, match="pass pixel_values_videos and video_grid_thw together"):
        generator.generate(**{**inputs, "video_grid_thw": None}, max_new_tokens=1)
    with pytest.raises(ValueError, match="pixel_values has 64 patch rows; image_grid_thw describes 32"):
        generator.generate(**{**inputs, "image_grid_thw": torch.tensor([[1, 4, 8]])}, max_new_tokens=1)
    fewer = {**inputs, "pixel_values": inputs["pixel_values"][:32], "image_grid_thw": torch.tensor([[1, 4, 8]])}
    with pytest.raises(ValueError, match="gives 8 image features for 16 image tokens"):
        generator.generate(**fewer, max_new_tokens=1)
    types, mask = inputs["mm_token_type_ids"].numpy(), inputs["attention_mask"].numpy()
    with pytest.raises(ValueError, match="sample 0 has more video tokens than video_grid_thw describes"):
        mrope_positions(types, mask, inputs["image_grid_thw"].numpy(), torch.zeros(0, 3).numpy(), 2)
    with pytest.raises(ValueError, match=r"sample 0: fewer image tokens than its image_grid_thw row \[1, 16, 16\]"):
        mrope_positions(types, mask, [[1, 16, 16]], inputs["video_grid_thw"].numpy(), 2)


def test_wrong_budget_keyword_or_a_too_small_budget_is_a_clear_error(model, inputs, tmp_path):
    with pytest.raises(ValueError, match="take max_visual_tokens as their visual budget, not max_images"):
        gp.export.onnx(model, tmp_path / "a", example_inputs=inputs, max_images=2)
    with pytest.raises(ValueError, match="max_visual_tokens must be an int >= 24"):
        gp.export.onnx(model, tmp_path / "b", example_inputs=inputs, max_visual_tokens=10)
    assert list(tmp_path.iterdir()) == []


def test_a_larger_token_budget_gives_a_larger_constant_k(model, inputs, tmp_path):
    folder = gp.export.onnx(model, tmp_path / "budget", example_inputs=inputs, max_visual_tokens=64, validate=False)
    assert gp.export.Manifest.read(folder).visual_budget == {"max_visual": 64, "top_k": 32}
    assert top_k_constants(folder) == [[32]]
    samples = [(2, [(8, 8), (8, 8)], [(2, 4, 4)], 2)]  # 40 visual tokens: over the example's 24, within 64
    many = qwen2_vl_inputs(model, samples)
    expected = model.generate(**many, max_new_tokens=3, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**many, max_new_tokens=3), expected)


def test_unpruned_export_is_the_baseline_with_the_same_tokens(model, inputs, tmp_path):
    folder = gp.export.onnx(model, tmp_path / "unpruned", example_inputs=inputs, prune=False)
    manifest = gp.export.Manifest.read(folder)
    assert manifest.method is None and top_k_constants(folder) == []
    expected = unmodified_generate(model, METHOD, inputs, max_new_tokens=4)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=4), expected)
