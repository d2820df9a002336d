"""LLaVA-NeXT export: any-resolution packing formed on the host, FastV inside the prefill graph, ONNX Runtime
tokens equal to the optimised PyTorch model for images of different sizes and aspect ratios, several per prompt."""

import itertools

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.export.anyres import crop_counts, pack_index  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.testing import llava_next_inputs, tiny_llava_next  # noqa: E402

from .helpers import FAMILIES, assert_ort_equals_generate, export_fixtures  # noqa: E402
from .onnx_graph import assert_profiles_ordered, top_k_constants  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "embed", "prefill", "decode")
# the contract suite's batch: a wide image (52 tokens) | a square and a tall one (88 + 46) | text only
SAMPLES = FAMILIES["LlavaNextForConditionalGeneration"].samples

# Tiny LLaVA-NeXT, 2 layers (layer 1 pruned); crops of 16 x 16 pixels, 4 x 4 patches; 1x2, 2x1 and 2x2 grids
model, inputs, exported = export_fixtures(
    lambda: tiny_llava_next(num_layers=2), METHOD, lambda model: llava_next_inputs(model, SAMPLES), "llava_next"
)


def test_the_host_packing_index_gathers_what_transformers_packs():
    """Every size and aspect ratio (wide, tall, square, smaller and larger than the grids; 1x3 and 3x2 grids
    too): the rows ``pack_index`` names are ``pack_image_features``'s rows, base crop, unpadding and newlines."""
    reference = tiny_llava_next(num_layers=1).model
    pinpoints = [[16, 32], [32, 16], [32, 32], [16, 48], [48, 16], [48, 32]]
    reference.config.image_grid_pinpoints = pinpoints
    sizes = np.array(list(itertools.product([5, 12, 20, 31, 32, 47, 100, 333], [3, 16, 17, 29, 50, 64, 480])))
    counts = crop_counts(sizes, pinpoints, 16)
    assert counts == [image_size_to_num_patches(size, pinpoints, 16) for size in torch.from_numpy(sizes)]
    crops = [torch.randn(count, 16, 8) for count in counts]
    newline = torch.randn(8)
    packed, _ = reference.pack_image_features(crops, torch.from_numpy(sizes), "default", image_newline=newline)
    rows = torch.cat([torch.cat(crops).flatten(0, 1), newline[None]])
    assert torch.equal(rows[torch.from_numpy(pack_index(sizes, pinpoints, 16, 4))], torch.cat(packed))


def test_export_writes_a_crop_vision_graph_and_a_token_budget(exported):
    manifest = gp.export.Manifest.read(exported)
    assert sorted(manifest.graphs) == sorted(GRAPHS) and manifest.family == "llava-next"
    assert (manifest.model["image_size"], manifest.model["patch_grid"], manifest.model["most_crops"]) == (16, 4, 5)
    assert manifest.model["image_grid_pinpoints"] == [[16, 32], [32, 16], [32, 32]]
    assert manifest.visual_budget == {"max_visual": 134, "top_k": 67}
    assert manifest.graphs["vision"]["dynamic_axes"] == {
        "pixel_values": {"0": "crops"},
        "pack_index": {"0": "image_tokens"},
        "image_features": {"0": "image_tokens"},
    }
    assert top_k_constants(exported) == [[67]]


def test_every_graph_is_accepted_by_the_tensorrt_parser_rules(exported):
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph
    manifest = gp.export.Manifest.read(exported)
    for max_batch, max_text, max_new_tokens in ((1, 512, 256), (4, 8, 1)):
        assert_profiles_ordered(trt_profiles(manifest, max_batch, max_text, max_new_tokens))
    assert trt_profiles(manifest, max_batch=2)["vision"]["pixel_values"][2][0] == 2 * 134 // 16 * 5
    assert "--onnx=vision.onnx" in (exported / "build_engines.sh").read_text()
    assert "at most 134 image tokens per sample (any-resolution images" in (exported / "TENSORRT.md").read_text()


def test_ort_greedy_tokens_and_prefill_logits_equal_pytorch(model, inputs, exported):
    """Wide, square and tall images in one batch, two images in one prompt, a prompt without one."""
    assert_ort_equals_generate(model, inputs, exported)


def test_other_sizes_and_batches_run_on_the_same_export(model, exported):
    """Batch 1 with a tall image; then 88 | 72 | 34 tokens (2x2 grid with two images, 2x2 unpadded, 1x2
    unpadded) and crops already stacked ``[crops, 3, H, W]``, as ``get_image_features`` also takes them."""
    generator = gp.export.OrtGenerator(exported)
    for samples in ([(1, [(40, 16)], 2)], [(2, [(12, 30), (16, 16)], 1), (4, [(30, 20)], 2), (3, [(9, 40)], 0)]):
        inputs = llava_next_inputs(model, samples, seed=5)
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert torch.equal(generator.generate(**inputs, max_new_tokens=4), expected)
    counts = crop_counts(inputs["image_sizes"].numpy(), model.config.image_grid_pinpoints, 16)
    stacked = torch.cat([image[:count] for image, count in zip(inputs["pixel_values"], counts, strict=True)])
    assert torch.equal(generator.generate(**{**inputs, "pixel_values": stacked}, max_new_tokens=4), expected)


def test_inputs_from_the_real_processor_run_on_the_same_export(model, exported, tmp_path):
    """``LlavaNextProcessor`` output (PIL images of three aspect ratios, crops padded per image, left padding)."""
    pytest.importorskip("PIL", reason="the processor test needs Pillow (in the dev extra)")
    from transformers import AutoProcessor

    from graphprune.tiny_checkpoints import random_image, save_llava_next

    save_llava_next(model, tmp_path)
    prompts = ["w9 w10 <image> w11 w12", "w20 <image> w30 <image> w31", "w40 w41 w42"]
    images = [random_image(0, 12, 30), random_image(1, 30, 20), random_image(2, 9, 40)]
    inputs = AutoProcessor.from_pretrained(tmp_path)(
        text=prompts, images=images, padding=True, padding_side="left", return_tensors="pt"
    )
    assert inputs["pixel_values"].shape[:2] == (3, 5)  # a 2x2 grid's 5 crops; the others padded
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(exported).generate(**inputs, max_new_tokens=4), expected)


def test_bad_inputs_are_clear_one_line_errors(model, inputs, exported, tmp_path):
    generator = gp.export.OrtGenerator(exported)
    wrong = [
        (
            {**llava_next_inputs(model, [(1, [(32, 32), (30, 20)], 1)])},
            "holds 160 visual tokens; this export takes at most 134: export again with a larger max_visual_tokens",
        ),
        ({**inputs, "image_sizes": None}, "pass pixel_values and image_sizes together"),
        (
            {**inputs, "image_sizes": inputs["image_sizes"].flip(-1)},
            r"image_sizes gives 188 image features for 186 "
            "image tokens in input_ids",
        ),
        ({**inputs, "image_sizes": inputs["image_sizes"][:2]}, "pixel_values holds 3 images; image_sizes gives 2"),
        (
            {**inputs, "image_grid_thw": torch.ones(1, 3)},
            r"takes input_ids, attention_mask, pixel_values, "
            r"image_sizes; got also \['image_grid_thw'\]",
        ),
    ]
    for bad, match in wrong:
        with pytest.raises(ValueError, match=match) as raised:
            generator.generate(**bad, max_new_tokens=1)
        assert "\n" not in str(raised.value)
    text_only = llava_next_inputs(model, [(4, [], 3)])
    with pytest.raises(ValueError, match="take max_visual_tokens as their visual budget, not max_images"):
        gp.export.onnx(model, tmp_path / "a", example_inputs=inputs, max_images=2)
    with pytest.raises(ValueError, match="example_inputs must hold at least one image"):
        gp.export.onnx(model, tmp_path / "b", example_inputs=text_only)
    assert list(tmp_path.iterdir()) == []


def test_a_tower_whose_class_token_is_kept_is_refused(tmp_path):
    """``vision_feature_select_strategy='full'`` keeps the class token, so a crop's features do not form the
    patch grid that transformers lays out (it warns and packs them wrongly): the export refuses, writing nothing."""
    full = tiny_llava_next(num_layers=2)
    inputs = llava_next_inputs(full, [(2, [(16, 16)], 1)])
    full.config.vision_feature_select_strategy = "full"
    with gp.optimized(full, METHOD), pytest.raises(ValueError) as raised:
        gp.export.onnx(full, tmp_path / "full", example_inputs=inputs)
    assert str(raised.value) == (
        "graphprune exports LLaVA-NeXT with vision_feature_select_strategy='default' only (transformers packs "
        "crops of patch_grid² features); got 'full'"
    )
    assert list(tmp_path.iterdir()) == []
