"""``Report.plot`` for Qwen3-VL, LLaVA-OneVision, InternVL and Idefics3 / SmolVLM: each visual token is the cell
of the picture region it came from (after pixel shuffle, pooling, unpadding and downscaling; written out here
per family), every cell of a panel is one token, the highlighted cells are exactly ``report.kept`` and the PNG
is written."""

import pytest
import torch

import graphprune as gp
from graphprune import testing
from tests.test_plot import FASTV, check, explained, visual_positions

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

pytest.importorskip("matplotlib")


def check_family(report, inputs, b, expected: dict, tmp_path=None):
    """``check``, and: the sample's units are its visual positions, each panel's cells are its tokens (one each)."""
    check(report, b, expected)
    layout = report.layouts[b]
    assert layout.units.tolist() == visual_positions(inputs, b, testing.IMAGE_TOKEN_ID, testing.VIDEO_TOKEN_ID)
    for p, panel in enumerate(layout.panels):
        own = [tuple(cell) for cell in layout.cells.tolist() if cell[0] == p]
        assert len(own) == len(set(own)) == panel.rows * panel.cols > 0
    if tmp_path is not None:
        from matplotlib.image import imread

        figure = report.plot(tmp_path / "kept.png")
        width = max(len(layout.panels) for layout in report.layouts)
        assert len(figure.axes) == width * len(report.layouts)
        assert imread(tmp_path / "kept.png").shape[:2] == (round(figure.bbox.height), round(figure.bbox.width))


def test_qwen3_vl_merged_grid_and_video_blocks_apart(tmp_path):
    model = testing.tiny_qwen3_vl()  # spatial merge 2, temporal patch 2
    inputs = testing.qwen3_vl_inputs(model, [(3, [(4, 6)], [(2, 4, 4)], 2), (2, [(6, 4)], [], 3)])
    report = explained(model, inputs, FASTV)
    image = visual_positions(inputs, 0, testing.IMAGE_TOKEN_ID)
    video = visual_positions(inputs, 0, testing.VIDEO_TOKEN_ID)
    assert video[4] - video[3] > 1  # the video's two temporal blocks, a timestamp and vision tokens between
    expected = {p: ("image 0", j // 3, j % 3) for j, p in enumerate(image)}
    expected |= {
        p: (f"video 0 frames {2 * (j // 4)}-{2 * (j // 4) + 1}", j % 4 // 2, j % 2) for j, p in enumerate(video)
    }
    check_family(report, inputs, 0, expected, tmp_path)
    check_family(report, inputs, 1, {p: ("image 1", j // 2, j % 2) for j, p in enumerate(image_positions(inputs, 1))})


def test_qwen3_vl_moe_has_the_same_layout():
    from graphprune.plot import visual_layouts

    samples = [(3, [(4, 6)], [(2, 4, 4)], 2)]
    dense, moe = testing.tiny_qwen3_vl(), testing.tiny_qwen3_vl(moe=True)
    layouts = [visual_layouts(model, "qwen3-vl", testing.qwen3_vl_inputs(model, samples)) for model in (dense, moe)]
    assert type(moe).__name__ == "Qwen3VLMoeForConditionalGeneration" and len(layouts[1][0].units) == 14
    for field in ("units", "cells"):
        assert torch.equal(getattr(layouts[0][0], field), getattr(layouts[1][0], field))
    assert [panel.title for panel in layouts[1][0].panels] == ["image 0", "video 0 frames 0-1", "video 0 frames 2-3"]


def image_positions(inputs, b):
    return visual_positions(inputs, b, testing.IMAGE_TOKEN_ID)


def stitched(crops, rows, cols):
    """Crops ``[rows·cols, 3, H, W]`` (row-major) as one picture."""
    return torch.cat([torch.cat(list(crops[r * cols : (r + 1) * cols]), dim=-1) for r in range(rows)], dim=-2)


def test_llava_onevision_anyres_unpadded_several_images_and_pooled_video(tmp_path):
    model = testing.tiny_llava_onevision()  # 4x4 patches (4 px) per crop; grids 1x2, 2x1, 2x2
    inputs = testing.llava_onevision_inputs(model, [(3, [(12, 40)], 1, 2), (2, [(16, 16), (16, 16)], 0, 3)], frames=2)
    report = explained(model, inputs, FASTV)
    # sample 0: base 4x4; the 1x2 crop grid (4x8 patches) unpadded to its rows 1-2, a newline after each row;
    # the video: 2 frames pooled to 2x2, then one newline
    image, video = image_positions(inputs, 0), visual_positions(inputs, 0, testing.VIDEO_TOKEN_ID)
    assert len(image) == 16 + 2 * 9 and len(video) == 2 * 4 + 1
    expected = {p: ("image 0 base", j // 4, j % 4) for j, p in enumerate(image[:16])}
    expected |= {p: ("image 0 crops 1x2", j // 9, j % 9) for j, p in enumerate(image[16:]) if j % 9 < 8}
    expected |= {p: (f"video 0 frame {j // 4}", j % 4 // 2, j % 2) for j, p in enumerate(video[:8])}
    check_family(report, inputs, 0, expected, tmp_path)
    crops = report.layouts[0].panels[1].pixels
    assert torch.equal(crops, stitched(inputs["pixel_values"][0, 1:3], 1, 2)[:, 4:12])  # patch rows 1-2
    # sample 1, two images: each its base crop only, then a newline
    image = image_positions(inputs, 1)
    expected = {p: (f"image {1 + j // 17}", j % 17 // 4, j % 17 % 4) for j, p in enumerate(image) if j % 17 < 16}
    check_family(report, inputs, 1, expected)

    # anyres_max_1: the 2x2 grid (8x8 patches) unpadded to 6x8, then downscaled to 3x4 (a token: 2x2 patches)
    model.config.vision_aspect_ratio = "anyres_max_1"
    inputs = testing.llava_onevision_inputs(model, [(3, [(24, 32)], 0, 2)])
    report = gp.explain(model, **inputs)
    image = image_positions(inputs, 0)
    assert len(image) == 16 + 3 * 5
    expected = {p: ("image 0 base", j // 4, j % 4) for j, p in enumerate(image[:16])}
    expected |= {p: ("image 0 crops 2x2", j // 5, j % 5) for j, p in enumerate(image[16:]) if j % 5 < 4}
    check_family(report, inputs, 0, expected)
    crops = report.layouts[0].panels[1].pixels
    assert torch.equal(crops, stitched(inputs["pixel_values"][0, 1:5], 2, 2)[:, 4:28])  # patch rows 1-6


def test_internvl_tiles_pixel_shuffled(tmp_path):
    model = testing.tiny_internvl()  # 4x4 patches per tile, shuffled 2x2: a tile is 2x2 tokens
    inputs = testing.internvl_inputs(model, [(3, [2, 1], 2), (2, [3], 3)])
    report = explained(model, inputs, FASTV)
    images, tiles = iter([[0, 0, 1], [2, 2, 2]]), iter(inputs["pixel_values"])
    for b in range(2):
        image_of = next(images)
        expected, first = {}, {}
        for j, p in enumerate(image_positions(inputs, b)):
            tile = j // 4 - first.setdefault(image_of[j // 4], j // 4)
            expected[p] = (f"image {image_of[j // 4]} tile {tile}", j % 4 // 2, j % 2)
        check_family(report, inputs, b, expected, tmp_path if b else None)
        for panel in report.layouts[b].panels:
            assert torch.equal(panel.pixels, next(tiles))


@pytest.mark.parametrize("version", ["idefics3", "smolvlm"])
def test_idefics3_tiles_pixel_shuffled_padding_tiles_skipped(tmp_path, version):
    model = testing.tiny_idefics3(version=version)  # 4x4 patches per tile, shuffled 2x2: a tile is 2x2 tokens
    inputs = testing.idefics3_inputs(model, [(3, [(1, 2), (1, 1)], 2), (2, [(2, 2)], 3)])
    report = explained(model, inputs, FASTV)
    for b, tiles in enumerate((4, 5)):  # 1x2 + global, then 1x1: 4 of 5 (a zero padding tile); 2x2 + global
        expected = {p: (f"tile {j // 4}", j % 4 // 2, j % 2) for j, p in enumerate(image_positions(inputs, b))}
        check_family(report, inputs, b, expected, tmp_path if b else None)
        assert [panel.title for panel in report.layouts[b].panels] == [f"tile {t}" for t in range(tiles)]
        for t, panel in enumerate(report.layouts[b].panels):
            assert torch.equal(panel.pixels, inputs["pixel_values"][b, t])
    assert not inputs["pixel_values"][0, 4].any()
