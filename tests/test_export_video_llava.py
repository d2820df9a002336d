"""Video-LLaVA export: image and video towers, images and videos ranked together by FastV inside the
prefill graph, ONNX Runtime tokens equal to the optimised PyTorch model."""

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.testing import tiny_video_llava, video_llava_inputs  # noqa: E402

from .helpers import assert_ort_equals_generate, export_fixtures  # noqa: E402
from .onnx_graph import assert_profiles_ordered, top_k_constants  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "video", "embed", "prefill", "decode")
# (text_before, images, videos, text_after): 16 + 136 | 136 (video only) | 16 (image only) visual tokens
SAMPLES = [(3, 1, 1, 4), (2, 0, 1, 3), (5, 1, 0, 2)]


# Tiny Video-LLaVA, 2 layers (layer 1 pruned), 8-frame videos
model, inputs, exported = export_fixtures(
    lambda: tiny_video_llava(num_layers=2), METHOD, lambda model: video_llava_inputs(model, SAMPLES), "video_llava"
)


def test_export_writes_both_towers_and_a_token_budget(exported):
    manifest = gp.export.Manifest.read(exported)
    assert sorted(manifest.graphs) == sorted(GRAPHS)
    assert manifest.family == "video-llava"
    assert (manifest.model["tokens_per_image"], manifest.model["tokens_per_video"]) == (16, 136)  # 8 x (16 + 1)
    assert manifest.visual_budget == {"max_visual": 152, "top_k": 76}
    assert manifest.graphs["video"]["dynamic_axes"]["pixel_values_videos"] == {"0": "videos"}
    assert [spec["name"] for spec in manifest.graphs["embed"]["inputs"]] == [
        "input_ids",
        "image_features",
        "video_features",
    ]
    assert top_k_constants(exported) == [[76]]


def test_every_graph_is_accepted_by_the_tensorrt_parser_rules(exported):
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph
    manifest = gp.export.Manifest.read(exported)
    for max_text, max_new_tokens in ((512, 256), (8, 1)):
        assert_profiles_ordered(trt_profiles(manifest, max_text=max_text, max_new_tokens=max_new_tokens))
    assert "--onnx=video.onnx" in (exported / "build_engines.sh").read_text()


def test_ort_greedy_tokens_and_prefill_logits_equal_pytorch(model, inputs, exported):
    assert_ort_equals_generate(model, inputs, exported)


def test_other_batch_shapes_run_on_the_same_export(model, exported):
    """Batch 1; a video alone, two images, text only: the axes are dynamic, the budget holds."""
    for samples in ([(3, 1, 0, 9)], [(1, 0, 1, 2), (7, 2, 0, 1), (2, 0, 0, 5)]):
        inputs = video_llava_inputs(model, samples, seed=5)
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert torch.equal(gp.export.OrtGenerator(exported).generate(**inputs, max_new_tokens=4), expected)


def test_an_example_without_videos_still_exports_the_video_tower(model, tmp_path):
    images_only = video_llava_inputs(model, [(3, 2, 0, 4), (2, 1, 0, 3)])
    folder = gp.export.onnx(model, tmp_path / "images", example_inputs=images_only, max_visual_tokens=152)
    assert sorted(gp.export.Manifest.read(folder).graphs) == sorted(GRAPHS)
    inputs = video_llava_inputs(model, [(1, 0, 1, 2), (3, 1, 0, 2)], seed=3)
    expected = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=3), expected)


def test_bad_inputs_are_clear_errors(model, inputs, exported, tmp_path):
    generator = gp.export.OrtGenerator(exported)
    with pytest.raises(ValueError, match="at most 152: export again with a larger max_visual_tokens"):
        generator.generate(**video_llava_inputs(model, [(1, 2, 1, 1)]), max_new_tokens=1)
    one_video = video_llava_inputs(model, [(1, 0, 1, 1)])
    two_videos = torch.cat([one_video["pixel_values_videos"]] * 2)
    with pytest.raises(ValueError, match="gives 272 video features for 136 video tokens"):
        generator.generate(**{**one_video, "pixel_values_videos": two_videos}, max_new_tokens=1)
    accepted = r"takes input_ids, attention_mask, pixel_values_images, pixel_values_videos; got also \['image_sizes'\]"
    with pytest.raises(ValueError, match=accepted):
        generator.generate(**one_video, image_sizes=torch.ones(1, 2), max_new_tokens=1)
    with pytest.raises(ValueError, match="take max_visual_tokens as their visual budget, not max_images"):
        gp.export.onnx(model, tmp_path / "a", example_inputs=inputs, max_images=2)
    assert list(tmp_path.iterdir()) == []
