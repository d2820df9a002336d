"""Config validation, the keep-count rule and the paper's FLOPs formula."""

import json
from dataclasses import asdict
from fractions import Fraction

import numpy as np
import pytest
import torch

import graphprune as gp
from graphprune.methods import n_keep


@pytest.mark.parametrize("kwargs", [dict(k=0), dict(k=-1), dict(k=1.5), dict(k=True)])
def test_fastv_rejects_bad_k(kwargs):
    with pytest.raises(ValueError, match="k must"):
        gp.FastV(**kwargs)


@pytest.mark.parametrize("keep", [0, -0.1, 1.01, 2, "0.5", None])
def test_methods_reject_keep_outside_unit_interval(keep):
    with pytest.raises(ValueError, match=r"keep must be a fraction in \(0, 1\]"):
        gp.FastV(keep=keep)
    with pytest.raises(ValueError, match=r"keep must be a fraction in \(0, 1\]"):
        gp.CrossAttentionTrim(keep=keep)


def test_bad_query_and_select_name_the_accepted_values():
    with pytest.raises(ValueError, match="'last', 'mean'"):
        gp.FastV(query="first")
    with pytest.raises(ValueError, match="'head_union', 'topk'"):
        gp.CrossAttentionTrim(select="all")


@pytest.mark.parametrize(
    ("keep", "n_visual", "expected"),
    [(0.1, 30, 3), (0.5, 576, 288), (0.5, 5, 3), (0.25, 16, 4), (0.75, 16, 12), (1.0, 7, 7), (0.3, 10, 3), (0.5, 0, 0)]
    + [(1e-9, 576, 1), (1e-9, 1, 1), (1e-9, 0, 0), (1e-7, 30, 1)],  # a positive keep keeps at least one
)
def test_n_keep_is_ceil_with_float_tolerance(keep, n_visual, expected):
    assert n_keep(keep, n_visual) == expected


def test_flops_reproduce_the_fastv_paper_for_llava_1_5_7b():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32)
    before, after = gp.flops(config, gp.FastV(k=2, keep=0.5), n_tokens=612, n_visual=576)
    assert round(before / 32 / 1e9, 1) == 99.3  # the paper's 99.3 B per layer
    assert round(after / before, 2) == 0.55  # the paper's 55 % at k=2, keep=0.5
    assert gp.flops(config, gp.FastV(k=2, keep=1.0), 612, 576) == (before, before)


def test_flops_reject_unknown_formula_and_bad_k():
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=4)
    with pytest.raises(ValueError, match="formula must be one of"):
        gp.flops(config, gp.FastV(), 10, 5, formula="exact")
    with pytest.raises(ValueError, match="1 <= k < 4"):
        gp.flops(config, gp.FastV(k=4), 10, 5)


INTEGRAL_K = [np.int64(2), np.int32(2), np.uint8(2), np.array(2), torch.tensor(2), torch.tensor(2, dtype=torch.int16)]
REAL_KEEP = [
    np.float64(0.5),
    np.float32(0.5),
    np.array(0.5),
    torch.tensor(0.5),
    torch.tensor(0.5).half(),
    Fraction(1, 2),
]


@pytest.mark.parametrize("k", INTEGRAL_K, ids=repr)
def test_fastv_k_takes_any_integral_scalar_and_stores_a_plain_int(k):
    method = gp.FastV(k=k)
    assert type(method.k) is int and method == gp.FastV(k=2) and hash(method) == hash(gp.FastV(k=2))
    assert repr(method) == repr(gp.FastV(k=2))


@pytest.mark.parametrize("keep", REAL_KEEP, ids=repr)
def test_keep_takes_any_real_scalar_and_stores_a_plain_float(keep):
    for method, plain in (
        (gp.FastV(keep=keep), gp.FastV(keep=0.5)),
        (gp.CrossAttentionTrim(keep=keep), gp.CrossAttentionTrim()),
    ):
        assert type(method.keep) is float and method == plain and hash(method) == hash(plain)
        assert json.dumps(asdict(method)) == json.dumps(asdict(plain))  # the export manifest's method record
    assert type(gp.FastV(keep=np.int64(1)).keep) is float  # an integral 1 is the fraction 1.0


@pytest.mark.parametrize(
    "k",
    [
        np.bool_(True),
        torch.tensor(True),
        np.float64(2.0),
        torch.tensor(2.0),
        np.array([2]),
        torch.tensor([2]),
        torch.tensor([2, 3]),
        np.int64(0),
        torch.tensor(-1),
        [2],
        float("nan"),
        float("inf"),
    ],
    ids=repr,
)
def test_fastv_k_refuses_bools_floats_non_scalars_and_values_below_one(k):
    with pytest.raises(ValueError, match=r"^k must be an int >= 1 \(an integral number or 0-d integer tensor"):
        gp.FastV(k=k)


@pytest.mark.parametrize(
    "keep",
    [
        np.bool_(True),
        torch.tensor(True),
        float("nan"),
        np.float32("nan"),
        torch.tensor(float("nan")),
        float("inf"),
        np.float64(1.5),
        torch.tensor([0.5]),
        np.array([0.5, 0.5]),
        torch.tensor(0.5j),
        0.5j,
        [0.5],
    ],
    ids=repr,
)
def test_keep_refuses_bools_nan_complex_non_scalars_and_out_of_range(keep):
    for method in (gp.FastV, gp.CrossAttentionTrim):
        with pytest.raises(ValueError, match=r"^keep must be a fraction in \(0, 1\] \(a real number or 0-d tensor\)"):
            method(keep=keep)
