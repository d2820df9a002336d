"""The ranking runs in float32 inside the pruned graphs: a float16 model whose float16-rounded scores
would rank differently keeps what the float32 reference keeps (eager and torch.compile)."""

import pytest
import torch

import graphprune as gp
from graphprune.methods import n_keep
from graphprune.reference import cross_attention_trim_reference, fastv_reference
from graphprune.testing import llava_inputs, mllama_inputs, tiny_llava, tiny_mllama

FASTV = gp.FastV(k=1, keep=0.5)
TRIM = gp.CrossAttentionTrim(keep=0.5, select="topk")


def _best(scores: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` highest ``scores`` (ties to the lower index), sorted."""
    return sorted(sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))[:count])


def _assert_float16_would_rank_otherwise(scores: list[torch.Tensor], keep: float) -> None:
    """The test's premise: strict float32 cuts, and float16-rounded scores that would cut elsewhere in some sample
    (as did the references before they ranked in float32: HF's eager probabilities are rounded to float16)."""
    counts = [n_keep(keep, len(sample)) for sample in scores]
    for sample, count in zip(scores, counts, strict=True):
        ordered = sample.sort(descending=True).values
        assert ordered[count - 1] > ordered[count], "float32 scores tie at the cut"
    assert any(_best(s.half(), c) != _best(s, c) for s, c in zip(scores, counts, strict=True)), "no float16 change"


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.compile)])
def test_fastv_float16_model_keeps_the_float32_ranking(compile):
    # near-flat attention (small q/k gain): float16-rounded scores tie where float32 ones differ
    model = tiny_llava(num_layers=2, seed=1, qk_gain=0.05, dtype=torch.float16)
    inputs = llava_inputs(model, [(3, 1, 2), (2, 2, 1)])  # left-padded
    reference = fastv_reference(model, FASTV, **inputs)
    assert reference.scores.dtype == torch.float32
    _assert_float16_would_rank_otherwise(
        [s[v] for s, v in zip(reference.scores, reference.visual, strict=True)], FASTV.keep
    )
    with gp.optimized(model, FASTV, compile=compile):
        kept = gp.explain(model, **inputs).kept
    assert all(torch.equal(a, b) for a, b in zip(kept, reference.kept, strict=True))


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
def test_cross_attention_trim_float16_model_keeps_the_float32_ranking():
    model = tiny_mllama(num_layers=4, cross_attention_layers=(1, 3), seed=1, qk_gain=0.05, dtype=torch.float16)
    inputs = mllama_inputs(model, [(2, [2], 3)])
    reference = cross_attention_trim_reference(model, TRIM, **inputs)
    assert reference.scores.dtype == torch.float32
    scores = [s.mean(dim=0)[v] for s, v in zip(reference.scores, reference.valid, strict=True)]
    _assert_float16_would_rank_otherwise(scores, TRIM.keep)
    with gp.optimized(model, TRIM):
        kept = gp.explain(model, **inputs).kept
    assert torch.equal(kept[0], reference.kept[0])
