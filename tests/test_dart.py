"""DART (arXiv 2502.11494): the pass equals the independent eager reference (``graphprune.reference.dart``) on
LLaVA, Qwen2-VL and Qwen3-VL (kept sets, logits, greedy tokens), a left-padded batch gives each sample what it
gives alone, keep=1.0 is the unmodified model exactly, ``explain`` reports the kept positions, the config is
validated like FastV's, and an ONNX export gives PyTorch's tokens under ONNX Runtime."""

import pytest
import torch

import graphprune as gp
from graphprune.reference import dart_reference, dart_reference_generate

from .helpers import (
    FAMILIES,
    LOGITS_RTOL,
    assert_batch_equals_alone,
    assert_compiled_equals_reference,
    assert_ort_equals_generate,
    rel_error,
    slot_positions,
)

NEW_TOKENS = 4
NAMES = ["LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration", "Qwen3VLForConditionalGeneration"]
# the last: fewer kept visual tokens than pivots in some samples (the pivots of largest key norm are kept)
METHODS = [
    gp.DART(k=2, keep=0.5),
    gp.DART(k=1, keep=0.25, pivots=2, text_pivots=0),
    gp.DART(k=3, keep=0.75),
    gp.DART(k=2, keep=0.125),
]


def assert_clear_cut(reference, method, margin: float = 1e-5) -> None:
    """The cut among the non-pivot visual positions is far from a tie (else the comparison proves nothing)."""
    for b, kept in enumerate(reference.kept):
        scores = reference.scores[b]
        ranked = reference.visual[b] & (scores <= 1.0) & (scores != 0)
        chosen = int(ranked[kept].sum())
        values = scores[ranked].sort(descending=True).values
        if 0 < chosen < len(values):
            assert values[chosen - 1] - values[chosen] > margin, f"sample {b}: near-tie at the cut"


@pytest.mark.parametrize("method", METHODS, ids=str)
@pytest.mark.parametrize("name", [NAMES[0], *(pytest.param(name, marks=pytest.mark.slow) for name in NAMES[1:])])
@torch.no_grad()
def test_pass_equals_reference(family_models, name, method):
    model = family_models(name)
    batch = FAMILIES[name].inputs(model, FAMILIES[name].samples)
    reference = dart_reference(model, method, **batch)
    assert_clear_cut(reference, method)
    expected_ids = dart_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS)
    with gp.optimized(model, method):
        logits = model(**batch).logits
        slots = slot_positions(model)
        report = gp.explain(model, **batch)
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    visual = reference.visual & batch["attention_mask"].bool()
    assert torch.allclose(report.scores[visual], reference.scores[visual], atol=1e-5)
    for b, kept in enumerate(reference.kept):
        assert torch.equal(report.kept[b], kept), f"sample {b}"
        assert len(kept) == gp.methods.n_keep(method.keep, int(reference.visual[b].sum()))
        assert rel_error(logits[b, -len(slots[b]) :], reference.logits[b, slots[b]]) <= LOGITS_RTOL, f"sample {b}"
    assert torch.equal(ids, expected_ids)
    assert report.flops_after < report.flops_before


@pytest.mark.parametrize("name", [NAMES[0], pytest.param(NAMES[1], marks=pytest.mark.slow)])
@torch.no_grad()
def test_keep_one_is_exact_and_batch_equals_alone(family_models, name):
    model, family = family_models(name), FAMILIES[name]
    batch = family.inputs(model, family.samples)
    expected = model(**batch).logits
    with gp.optimized(model, gp.DART(keep=1.0)):
        assert torch.equal(model(**batch).logits, expected)
    with gp.optimized(model, gp.DART(k=2, keep=0.5)):
        assert_batch_equals_alone(model, batch, family.samples, family.inputs, NEW_TOKENS)


def test_dart_differs_from_fastv_and_is_validated(family_models):
    model = family_models("LlavaForConditionalGeneration")
    batch = FAMILIES["LlavaForConditionalGeneration"].inputs(model, FAMILIES["LlavaForConditionalGeneration"].samples)
    dart = dart_reference(model, gp.DART(k=2, keep=0.25), **batch).kept
    with gp.optimized(model, gp.FastV(k=2, keep=0.25)):
        fastv = gp.explain(model, **batch).kept
    assert any(not torch.equal(a, b) for a, b in zip(dart, fastv, strict=True))
    for bad in (dict(k=0), dict(keep=0.0), dict(keep=1.5), dict(pivots=0), dict(text_pivots=-1), dict(pivots=1.5)):
        with pytest.raises(ValueError, match="must be"):
            gp.DART(**bad)
    with pytest.raises(ValueError, match="1 <= k < 4"):
        gp.optimize(model, gp.DART(k=4))
    assert not hasattr(model, "_graphprune")
    assert gp.methods.method_from_dict(gp.methods.method_to_dict(gp.DART(k=3, pivots=2))) == gp.DART(k=3, pivots=2)
    assert gp.flops(model.config, gp.DART(k=2, keep=0.5), 612, 576) == gp.flops(model.config, gp.FastV(), 612, 576)


@torch.no_grad()
def test_sampling_equals_the_reference(family_models):
    model = family_models("LlavaForConditionalGeneration")
    batch = FAMILIES["LlavaForConditionalGeneration"].inputs(model, FAMILIES["LlavaForConditionalGeneration"].samples)
    method = gp.DART(k=2, keep=0.5)
    torch.manual_seed(7)
    expected = dart_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS, sample=True)
    with gp.optimized(model, method):
        torch.manual_seed(7)
        ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    assert torch.equal(ids, expected)


def test_dart_refused_where_it_does_not_fit(family_models):
    with pytest.raises(ValueError, match="DART does not fit MllamaForConditionalGeneration"):
        gp.optimize(family_models("MllamaForConditionalGeneration"), gp.DART())


@torch.no_grad()
@pytest.mark.slow
def test_onnx_export_passes_the_tensorrt_rules_and_gives_pytorch_tokens(family_models, tmp_path):
    """ONNX Runtime on a DART export (checked against TensorRT 10's parser rules): PyTorch's greedy tokens and
    first logits."""
    model = family_models("LlavaForConditionalGeneration")
    batch = FAMILIES["LlavaForConditionalGeneration"].inputs(model, FAMILIES["LlavaForConditionalGeneration"].samples)
    with gp.optimized(model, gp.DART(k=2, keep=0.5)):
        gp.export.onnx(model, tmp_path / "ort", example_inputs=batch)
        assert_ort_equals_generate(model, batch, tmp_path / "ort")


@pytest.mark.compile
@torch.no_grad()
def test_compiled_equals_reference(family_models):
    """torch.compile (inductor) of DART's pruned graphs: the reference's kept sets, logits and greedy tokens."""
    model = family_models("LlavaForConditionalGeneration")
    batch = FAMILIES["LlavaForConditionalGeneration"].inputs(model, FAMILIES["LlavaForConditionalGeneration"].samples)
    method = gp.DART(k=2, keep=0.5)
    reference = dart_reference(model, method, **batch)
    expected_ids = dart_reference_generate(model, method, **batch, max_new_tokens=NEW_TOKENS)
    assert_compiled_equals_reference(model, method, batch, reference, expected_ids, NEW_TOKENS)
