"""LLaVA-OneVision export: any-resolution images (shrunk to ``anyres_max_N``), several one-crop images per prompt
and pooled videos blended on the host's index, FastV inside the prefill graph, ONNX Runtime tokens equal to the
optimised PyTorch model."""

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.export.anyres import blend_index, shrunk  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.families.llava_onevision.export import (  # noqa: E402
    BlendedFeatures,
    image_inputs,
    onevision_layout,
    video_inputs,
    vision_args,
)
from graphprune.testing import llava_onevision_inputs, tiny_llava_onevision  # noqa: E402

from .helpers import assert_ort_equals_generate, export_fixtures, rel_error  # noqa: E402
from .onnx_graph import assert_profiles_ordered, top_k_constants  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "embed", "prefill", "decode")
# (text_before, image sizes, videos, text_after): a 32 x 26 image, its 8 x 6 unpadded grid shrunk to 6 x 4
# (16 + 24 + 6 tokens) | two one-crop images and a 4-frame video (17 + 17 + 17) | a 16 x 32 image (1x2 grid
# of 4 x 8, not shrunk: 16 + 32 + 4) and a video (17)
SAMPLES = [(3, [(32, 26)], 0, 4), (2, [(20, 12), (16, 16)], 1, 3), (5, [(16, 32)], 1, 2)]
MAX_CROPS = 2  # anyres_max_2: 32 patches; the tiny model's grids reach 8 x 8 = 64, under anyres_max_9's 144


def tiny(**kwargs):
    """Tiny LLaVA-OneVision (crops of 16 x 16 pixels, 4 x 4 patches; 1x2, 2x1, 2x2 grids), ``anyres_max_2``."""
    model = tiny_llava_onevision(num_layers=2, **kwargs)
    model.config.vision_aspect_ratio = f"anyres_max_{MAX_CROPS}"
    return model


model, inputs, exported = export_fixtures(
    tiny, METHOD, lambda model: llava_onevision_inputs(model, SAMPLES), "llava_onevision"
)


def test_the_host_blend_index_gives_what_transformers_packs_and_pools():
    """Sizes and aspect ratios under and over ``anyres_max_N`` (N = 1, 2, 9), one-crop images, 1x3 and 3x2 grids,
    and videos: the blended rows are ``get_image_features``' and ``get_video_features``' (float rounding aside:
    torch's bilinear kernel fuses multiply-adds)."""
    reference = tiny_llava_onevision(num_layers=1)
    reference.config.image_grid_pinpoints = [[16, 32], [32, 16], [32, 32], [16, 48], [48, 32]]
    vision = BlendedFeatures(reference).eval()
    sizes = list(itertools.product([5, 20, 31, 47, 100], [3, 17, 29, 64, 480]))
    per_sample = torch.tensor([1] * len(sizes) + [2])
    sizes = torch.tensor([*sizes, (16, 16), (40, 20)])
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((len(sizes), 7, 3, 16, 16), generator=generator)
    shrunk_grids = 0
    for max_crops in (1, 2, 9):
        reference.config.vision_aspect_ratio = f"anyres_max_{max_crops}"
        blend = image_inputs(onevision_layout(reference), pixels, sizes, per_sample)
        with torch.no_grad():
            ours = vision(*vision_args(blend, "cpu", None))
            theirs = reference.model.get_image_features(pixels, sizes, batch_num_images=per_sample).pooler_output
        assert rel_error(ours, torch.cat(theirs)) < 1e-6, max_crops
        shrunk_grids += int(((blend[2] > 0) & (blend[2] < 1)).any())
    assert shrunk_grids == 2  # anyres_max_9 shrinks none of these grids
    videos = torch.randn((2, 3, 3, 16, 16), generator=generator)
    with torch.no_grad():  # frames pooled to 2 x 2; transformers 5.17 appends the newline in forward
        theirs = reference.model.get_video_features(videos).pooler_output[:, : 3 * 4]
        ours = vision(*vision_args(video_inputs(onevision_layout(reference), videos), "cpu", None)).unflatten(
            0, (2, -1)
        )
    assert ours.shape == (2, 3 * 4 + 1, 64) and rel_error(ours[:, :-1], theirs) < 1e-6
    assert torch.equal(ours[:, -1], reference.model.image_newline.detach().expand(2, -1))


def test_the_example_s_first_image_is_shrunk(model, inputs):
    """The 32 x 26 image's 8 x 6 unpadded grid is over ``anyres_max_2``'s 32 patches: 6 x 4, bilinearly."""
    assert shrunk(8, 6, 4, MAX_CROPS) == (6, 4)
    sizes = inputs["image_sizes"][:1].numpy()
    taps, weights = blend_index(sizes, [True], model.config.image_grid_pinpoints, 16, 4, MAX_CROPS)
    assert len(taps) == 16 + 6 * 4 + 6 == int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    assert ((weights > 0) & (weights < 1)).any() and len(np.unique(taps[16:])) > 16


def test_export_writes_one_vision_graph_and_a_token_budget(exported):
    manifest = gp.export.Manifest.read(exported)
    assert sorted(manifest.graphs) == sorted(GRAPHS) and manifest.family == "llava-onevision"
    assert (manifest.model["patch_grid"], manifest.model["max_crops"], manifest.model["most_crops"]) == (4, 2, 5)
    assert manifest.visual_budget == {"max_visual": 69, "top_k": 35}
    assert manifest.graphs["vision"]["dynamic_axes"] == {
        "pixel_values": {"0": "crops"},
        "pack_index": {"0": "packed_tokens"},
        "pack_weights": {"0": "packed_tokens"},
        "features": {"0": "packed_tokens"},
    }
    assert top_k_constants(exported) == [[35]]


def test_every_graph_is_accepted_by_the_tensorrt_parser_rules(exported):
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph
    manifest = gp.export.Manifest.read(exported)
    for max_batch, max_text, max_new_tokens in ((1, 512, 256), (4, 8, 1)):
        assert_profiles_ordered(trt_profiles(manifest, max_batch, max_text, max_new_tokens))
    # at most 2 x 69 // 17 one-crop images of 5 crops each (more crops than 2 x 69 // 4 frames of 4 tokens)
    assert trt_profiles(manifest, max_batch=2)["vision"]["pixel_values"][2][0] == 2 * 69 // 17 * 5
    assert "pooled video frames" in (exported / "TENSORRT.md").read_text()


def test_ort_greedy_tokens_and_prefill_logits_equal_pytorch(model, inputs, exported):
    """A shrunk image, two one-crop images and a video, an any-resolution image and a video; left padding."""
    assert_ort_equals_generate(model, inputs, exported)


def test_other_sizes_and_batches_run_on_the_same_export(model, exported):
    """Batch 1 with a 32 x 32 image (8 x 8 shrunk to 5 x 5); then a video alone | a tall image | text only."""
    generator = gp.export.OrtGenerator(exported)
    for samples in ([(1, [(32, 32)], 0, 2)], [(2, [], 1, 1), (4, [(40, 16)], 0, 2), (3, [], 0, 1)]):
        inputs = llava_onevision_inputs(model, samples, seed=5)
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert torch.equal(generator.generate(**inputs, max_new_tokens=4), expected)


def test_a_keep_1_export_gives_the_unmodified_model_s_tokens(inputs, tmp_path):
    """FastV keeping every visual token: the export's tokens are the unoptimised model's."""
    unmodified = tiny()
    expected = unmodified.generate(**inputs, max_new_tokens=4, do_sample=False)
    with gp.optimized(unmodified, gp.FastV(k=1, keep=1.0)):
        folder = gp.export.onnx(unmodified, tmp_path / "keep1", example_inputs=inputs)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=4), expected)


def test_bad_inputs_are_clear_one_line_errors(model, inputs, exported, tmp_path):
    generator = gp.export.OrtGenerator(exported)
    wrong = [
        (
            llava_onevision_inputs(model, [(1, [(32, 32)], 2, 1)]),
            "holds 80 visual tokens; this export takes at most 69: export again with a larger max_visual_tokens",
        ),
        ({**inputs, "image_sizes": None}, "pass pixel_values and image_sizes together"),
        (
            {**inputs, "batch_num_images": torch.tensor([1, 1])},
            r"batch_num_images must add up to the 4 images of image_sizes; got \[1, 1\]",
        ),
        (
            {**inputs, "batch_num_images": None},
            "image_sizes gives 180 image features for 132 image tokens in input_ids",
        ),
        (
            {**inputs, "pixel_values_videos": inputs["pixel_values_videos"][0]},
            r"pixel_values_videos must be \[videos, frames, 3, H, W\]; got shape \(4, 3, 16, 16\)",
        ),
        (
            {**inputs, "image_grid_thw": torch.ones(1, 3)},
            r"takes input_ids, attention_mask, pixel_values, image_sizes, batch_num_images, pixel_values_videos; "
            r"got also \['image_grid_thw'\]",
        ),
    ]
    for bad, match in wrong:
        with pytest.raises(ValueError, match=match) as raised:
            generator.generate(**bad, max_new_tokens=1)
        assert "\n" not in str(raised.value)
    text_only = llava_onevision_inputs(model, [(4, [], 0, 3)])
    with pytest.raises(ValueError, match="take max_visual_tokens as their visual budget, not max_images"):
        gp.export.onnx(model, tmp_path / "a", example_inputs=inputs, max_images=2)
    with pytest.raises(ValueError, match="example_inputs must hold at least one image or video"):
        gp.export.onnx(model, tmp_path / "b", example_inputs=text_only)
    with pytest.raises(ValueError, match="example_inputs must hold image_sizes with pixel_values"):
        gp.export.onnx(model, tmp_path / "c", example_inputs={**inputs, "image_sizes": None})
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_aspect_ratio_setting_is_refused(tmp_path):
    """transformers reads ``vision_aspect_ratio`` as ``anyres_max_N``; anything else is refused, nothing written."""
    other = tiny()
    inputs = llava_onevision_inputs(other, [(2, [(16, 16)], 0, 1)])
    other.config.vision_aspect_ratio = "pad"
    with gp.optimized(other, METHOD), pytest.raises(ValueError) as raised:
        gp.export.onnx(other, tmp_path / "pad", example_inputs=inputs)
    assert str(raised.value) == (
        "graphprune exports LLaVA-OneVision with vision_aspect_ratio='anyres_max_N' (as transformers reads it); "
        "got 'pad'"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_tower_whose_crops_are_not_the_patch_grid_is_refused(tmp_path):
    """``vision_feature_select_strategy='default'`` drops a SigLIP patch (SigLIP has no class token), so a crop's
    features do not form the patch grid: refused before the decoder is captured, nothing written."""
    other = tiny()
    inputs = llava_onevision_inputs(other, [(2, [(16, 16)], 0, 1)])
    other.config.vision_feature_select_strategy = "default"
    with gp.optimized(other, METHOD), pytest.raises(ValueError) as raised:
        gp.export.onnx(other, tmp_path / "default", example_inputs=inputs)
    assert str(raised.value) == (
        "graphprune exports LLaVA-OneVision towers whose crops give patch_grid² = 16 features each (no class token, "
        "or it dropped); got 15"
    )
    assert list(tmp_path.iterdir()) == []
