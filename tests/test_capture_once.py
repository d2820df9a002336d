"""The test suite's capture cache (``capture_once`` in tests/conftest.py): one capture per session decoder, and
each ``optimize`` its own rewritten graphs on the decoder's own parameters."""

import pytest
import torch

import graphprune as gp
from graphprune.models import adapter_for
from graphprune.runtime import optimized_state

from .conftest import _CAPTURES


def prefill_graph(model, method):
    with gp.optimized(model, method):
        return optimized_state(model).decoder.prefill_graph


def test_a_second_optimize_reuses_the_capture_and_gets_its_own_graphs(llava, batch, capture_once):
    decoder = adapter_for(llava).decoder(llava)
    first = prefill_graph(llava, gp.FastV(k=1, keep=0.5))
    captured = dict(_CAPTURES[decoder])
    assert sorted(key[0] for key in captured) == ["decode", "prefill"]
    second = prefill_graph(llava, gp.FastV(k=3, keep=0.25))
    assert _CAPTURES[decoder] == captured  # the same captures, none added
    assert first is not second and first.graph is not second.graph
    assert {id(p) for p in second.parameters()} <= {id(p) for p in decoder.parameters()}
    with gp.optimized(llava, gp.FastV(k=3, keep=0.25)):
        report = gp.explain(llava, **batch)
    assert 0 < len(report.kept[0]) < report.n_visual[0]


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_a_replaced_weight_is_captured_again(llava, capture_once):
    decoder = adapter_for(llava).decoder(llava)
    prefill_graph(llava, gp.FastV(k=1, keep=0.5))
    before = len(_CAPTURES[decoder])
    norm = decoder.norm
    original = norm.weight
    try:
        norm.weight = torch.nn.Parameter(original.detach().clone())
        prefill_graph(llava, gp.FastV(k=1, keep=0.5))
        assert len(_CAPTURES[decoder]) == before + 2
    finally:
        norm.weight = original
