"""``Report.plot`` and ``graphprune explain --image``: each family's visual units map to the cells of the
pictures they came from (checked against the layout written out here, per family), the highlighted cells are
exactly ``report.kept``, and the PNG shows them (read back, pixel per cell)."""

import math

import pytest
import torch

import graphprune as gp
from graphprune import testing
from tests.test_cli import graphprune, one_line_error

pytest.importorskip("matplotlib")
FASTV, TOPK = gp.FastV(k=1, keep=0.5), gp.CrossAttentionTrim(keep=0.5, select="topk")


def explained(model, inputs, method):
    gp.optimize(model, method)
    return gp.explain(model, **inputs)


def visual_positions(inputs, b, *token_ids):
    row = inputs["input_ids"][b]
    return torch.cat([(row == token).nonzero() for token in token_ids]).flatten().sort().values.tolist()


def check(report, b, expected: dict):
    """``expected``: unit -> (panel title, row, col) for the units with a cell; the other visual units have none."""
    layout = report.layouts[b]
    titles = [panel.title for panel in layout.panels]
    got = {
        unit: (titles[panel], row, col)
        for unit, (panel, row, col) in zip(layout.units.tolist(), layout.cells.tolist(), strict=True)
        if panel >= 0
    }
    assert got == expected
    kept = set(report.kept[b].tolist())
    assert kept <= set(layout.units.tolist())
    assert {(titles[p], r, c) for p, r, c in layout.highlighted(report.kept[b])} == {
        cell for unit, cell in expected.items() if unit in kept
    }


def test_llava_grid_per_image():
    model = testing.tiny_llava()  # 4x4 patches per image
    inputs = testing.llava_inputs(model, [(3, 2, 4), (2, 1, 3)])
    report = explained(model, inputs, FASTV)
    images = iter(range(3))
    for b, count in enumerate((2, 1)):
        positions = visual_positions(inputs, b, testing.IMAGE_TOKEN_ID)
        names = [f"image {next(images)}" for _ in range(count)]
        check(report, b, {p: (names[j // 16], j % 16 // 4, j % 4) for j, p in enumerate(positions)})


def test_video_llava_frames_strip_after_images():
    model = testing.tiny_video_llava()
    inputs = testing.video_llava_inputs(model, [(3, 1, 1, 2), (2, 0, 1, 3)], frames=3)
    report = explained(model, inputs, FASTV)
    expected = {
        p: ("image 0", j // 4, j % 4) for j, p in enumerate(visual_positions(inputs, 0, testing.IMAGE_TOKEN_ID))
    }
    for b in range(2):
        for j, p in enumerate(visual_positions(inputs, b, testing.VIDEO_TOKEN_ID)):
            frame, k = divmod(j, 17)  # a CLS feature, then 16 patches, per frame
            if k:
                expected[p] = (f"video {b} frame {frame}", (k - 1) // 4, (k - 1) % 4)
        check(report, b, expected)
        expected = {}
    assert [len(layout.panels) for layout in report.layouts] == [4, 3]


def test_qwen2_vl_merged_grid_and_video_frames():
    model = testing.tiny_qwen2_vl()  # spatial merge 2, temporal patch 2
    inputs = testing.qwen2_vl_inputs(model, [(3, [(4, 6)], [(2, 4, 4)], 2), (2, [(6, 4)], [], 3)])
    report = explained(model, inputs, FASTV)
    image = visual_positions(inputs, 0, testing.IMAGE_TOKEN_ID)
    video = visual_positions(inputs, 0, testing.VIDEO_TOKEN_ID)
    expected = {p: ("image 0", j // 3, j % 3) for j, p in enumerate(image)}
    expected |= {
        p: (f"video 0 frames {2 * (j // 4)}-{2 * (j // 4) + 1}", j % 4 // 2, j % 2) for j, p in enumerate(video)
    }
    check(report, 0, expected)
    check(report, 1, {p: ("image 1", j // 2, j % 2) for j, p in enumerate(visual_positions(inputs, 1, 3))})
    # the panel shows the image the patch rows came from: its first frame, re-assembled
    pixels = report.layouts[0].panels[0].pixels
    patch_row = inputs["pixel_values"][0].view(3, 2, 2, 2)  # channels, temporal, patch, patch: the top-left patch
    assert pixels.shape == (3, 8, 12) and torch.equal(pixels[:, :2, :2], patch_row[:, 0])


def test_llava_next_base_then_unpadded_crops_with_newlines():
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    model = testing.tiny_llava_next()  # 4x4 patches per crop; grids 1x2, 2x1, 2x2
    inputs = testing.llava_next_inputs(model, [(3, [(12, 40)], 2)])  # wide: a 1x2 grid of 4x8 cells, unpadded
    report = explained(model, inputs, FASTV)
    rows = unpad_image(torch.arange(4.0).view(1, 4, 1).expand(1, 4, 8), torch.tensor([12, 40]))[0, :, 0].long().tolist()
    assert 0 < len(rows) < 4
    positions = visual_positions(inputs, 0, testing.IMAGE_TOKEN_ID)
    assert len(positions) == 16 + len(rows) * (8 + 1)
    expected = {p: ("image 0 base", j // 4, j % 4) for j, p in enumerate(positions[:16])}
    for j, p in enumerate(positions[16:]):
        row, col = divmod(j, 9)
        if col < 8:  # the 9th of each row is the newline token
            expected[p] = ("image 0 crops 1x2", rows[row], col)
    check(report, 0, expected)


def test_mllama_tiles_and_kept_per_tile():
    model = testing.tiny_mllama()  # 4x4 patches per tile, a CLS feature first: 17 features per tile, 4 tiles
    inputs = testing.mllama_inputs(model, [(1, [4, 2], 4), (3, [2], 5)])
    report = explained(model, inputs, TOPK)
    for b, tiles in enumerate(([4, 2], [2])):
        expected = {}
        for f in range(report.layouts[b].units.numel()):
            image, tile, k = f // 68, f // 17 % 4, f % 17
            if image < len(tiles) and tile < tiles[image] and k:
                expected[f] = (f"image {image} tile {tile}", (k - 1) // 4, (k - 1) % 4)
        check(report, b, expected)
        assert [panel.tile for panel in report.layouts[b].panels] == [
            (i, t) for i, n in enumerate(tiles) for t in range(n)
        ]


def test_png_shows_exactly_the_kept_cells(tmp_path):
    from matplotlib.image import imread

    model = testing.tiny_llava()
    inputs = testing.llava_inputs(model, [(3, 2, 4), (2, 1, 3)])
    inputs["pixel_values"] = torch.zeros_like(inputs["pixel_values"])  # a flat image: drawn mid-grey
    report = explained(model, inputs, FASTV)
    figure = report.plot(tmp_path / "kept.png")
    png = imread(tmp_path / "kept.png")[..., :3]
    height = png.shape[0]
    axes = iter(figure.axes)
    for b, layout in enumerate(report.layouts):
        shown = set()
        for p in range(2):
            ax = next(axes)
            if p >= len(layout.panels):
                continue
            for row in range(4):
                for col in range(4):
                    x, y = ax.transData.transform((col + 0.5, row + 0.5))
                    value = png[height - 1 - math.floor(y), math.floor(x)].mean()
                    assert value == pytest.approx(0.5, abs=0.03) or value == pytest.approx(0.15, abs=0.03)
                    if value > 0.3:
                        shown.add((p, row, col))
        assert shown == layout.highlighted(report.kept[b]) and len(shown) == len(report.kept[b]) > 0


def test_without_matplotlib_plot_is_a_one_line_import_error(tmp_path, monkeypatch):
    model = testing.tiny_llava()
    report = explained(model, testing.llava_inputs(model, [(3, 1, 4)]), FASTV)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)  # what import finds without it
    with pytest.raises(
        ImportError, match=r"^graphprune's Report.plot needs matplotlib: pip install 'graphprune\[plot\]'$"
    ):
        report.plot(tmp_path / "kept.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_explain_image_writes_the_picture(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 200), (200, 60, 30)).save(tmp_path / "photo.png")
    result = graphprune("explain", "--image", "photo.png", "--out", "kept.png", "--keep", "0.25", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "kept 144/576 visual tokens" in result.stdout and (tmp_path / "kept.png").stat().st_size > 0
    line = one_line_error(graphprune("explain", "--image", "missing.png", cwd=tmp_path), "explain")
    assert "cannot read --image missing.png" in line


def test_cli_explain_rejects_options_of_the_other_method(tmp_path):
    line = one_line_error(
        graphprune("explain", "--image", "x.png", "--model", "mllama", "--k", "3", cwd=tmp_path), "explain"
    )
    assert "--k is not an option of CrossAttentionTrim" in line


def test_benchmark_chart_draws_each_series(tmp_path):
    from matplotlib.image import imread

    from benchmarks.harness import chart

    chart(tmp_path / "chart.png", {"a": [(0.25, 1.0), (0.5, 2.0)], "b": [(0.25, 2.0), (0.5, 1.0)]}, "keep", "ms")
    png = imread(tmp_path / "chart.png")[..., :3]
    blue, orange = (0.12, 0.47, 0.71), (1.0, 0.5, 0.05)  # matplotlib's first two line colours
    for colour in (blue, orange):
        assert (abs(png - torch.tensor(colour).numpy()).max(axis=-1) < 0.05).sum() > 50


def test_explain_image_tiles_a_wide_image_for_mllama():
    from PIL import Image

    from graphprune.demo import _tiles

    image = Image.new("RGB", (200, 100), (255, 0, 0))
    image.paste((0, 0, 255), (100, 0, 200, 100))  # left half red, right half blue
    vision = testing.tiny_mllama().config.vision_config  # 56-pixel tiles, up to 4
    grid, tiles = _tiles(image, vision)
    assert grid == [1, 2] and tiles.shape == (2, 3, 56, 56)
    red, blue = tiles[0, :, :, :50], tiles[1, :, :, 6:]  # away from the resampled seam
    assert (red[0] > 1.5).all() and (red[2] < -1.0).all() and (blue[0] < -1.5).all() and (blue[2] > 1.0).all()
