"""``Report.plot`` for Gemma 3: each image's ``mm_tokens_per_image`` tokens are the cells of the square grid its
SigLIP patches are average-pooled to (row-major, as the projector flattens them), one panel per image, several
images per prompt; the highlighted cells are exactly ``report.kept`` and the PNG is written."""

import pytest
import torch

from graphprune import testing
from tests.test_plot import FASTV, explained
from tests.test_plot_families import check_family, image_positions

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

pytest.importorskip("matplotlib")

SAMPLES = [(3, 2, 4), (2, 1, 3), (4, 0, 2)]  # two images, one, none


def test_gemma3_pooled_square_grid_per_image(tmp_path):
    model = testing.tiny_gemma3(image_size=48)  # 6x6 patches pooled 3x3 (kernel 2) to 2x2 tokens
    inputs = testing.gemma3_inputs(model, SAMPLES)
    report = explained(model, inputs, FASTV)
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]  # token j of an image: its pooled grid's cell, row-major
    images = iter(range(3))
    for b, count in enumerate((2, 1, 0)):
        names = [f"image {next(images)}" for _ in range(count)]
        positions = image_positions(inputs, b)
        assert len(positions) == 4 * count
        expected = {p: (names[j // 4], *cells[j % 4]) for j, p in enumerate(positions)}
        check_family(report, inputs, b, expected, tmp_path if b == 0 else None)
        assert [panel.title for panel in report.layouts[b].panels] == names
    assert [len(kept) for kept in report.kept] == [4, 2, 0]
    pixels = [panel.pixels for layout in report.layouts for panel in layout.panels]
    assert torch.equal(torch.stack(pixels), inputs["pixel_values"])


def test_gemma3_grid_is_the_projector_pooling():
    """16 tokens of 8x8 patches (kernel 2): a 4x4 grid; token 6 pools patch rows 2-3, columns 4-5: cell (1, 2)."""
    from graphprune.plot import visual_layouts

    model = testing.tiny_gemma3(image_size=64, tokens_per_image=16)
    layout = visual_layouts(model, "gemma3", testing.gemma3_inputs(model, [(1, 1, 1)]))[0]
    assert [(panel.rows, panel.cols) for panel in layout.panels] == [(4, 4)]
    assert layout.cells[6].tolist() == [0, 1, 2]
    assert layout.cells[:, 1:].tolist() == [[r, c] for r in range(4) for c in range(4)]
