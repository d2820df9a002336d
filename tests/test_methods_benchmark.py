"""benchmarks/methods.py end to end at tiny shapes: each method at the keep whose FLOPs fraction is the target's."""

from __future__ import annotations

import pytest

import graphprune as gp
from benchmarks import methods

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)


def test_tiny_run_puts_every_method_at_the_target_flops():
    rows = methods.main(["--preset", "tiny", "--fractions", "0.6", "--repeats", "1"])
    assert {type(row["method"]) for row in rows} == set(type(make(0.5)) for make in methods.methods(8).values())
    for row in rows:
        assert abs(row["flops_fraction"] - 0.6) < 0.05  # 16 visual tokens: keep moves in steps of 1/16
        assert row["prefill_ratio"] > 0
    fastv, dart = (next(row["method"] for row in rows if isinstance(row["method"], cls)) for cls in (gp.FastV, gp.DART))
    assert fastv.keep == dart.keep  # pruned once at the same layer: the same FLOPs at the same keep


def test_equal_flops_keep_is_the_closest_multiple_of_one_over_n_visual():
    config = methods.tiny_llava(num_layers=8).config
    keep, reached = methods.equal_flops_keep(config, methods.methods(8)["FastV"], 100, 64, 0.5)
    assert keep * 64 == round(keep * 64)
    before, after = gp.flops(config, gp.FastV(k=2, keep=keep), 100, 64)
    assert reached == after / before
    for other in (keep - 1 / 64, keep + 1 / 64):
        if 0 < other <= 1:
            before, after = gp.flops(config, gp.FastV(k=2, keep=other), 100, 64)
            assert abs(after / before - 0.5) >= abs(reached - 0.5)
