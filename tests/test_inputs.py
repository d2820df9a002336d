"""Inputs an HF user may pass: explain under concurrent calls, attention masks of any dtype, empty samples,
text-only prompts for every method, and right padding (refused where graphprune prunes, PyTorch and ONNX Runtime)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import graphprune as gp
from graphprune import optimized
from graphprune.testing import llava_inputs, mllama_inputs, qwen2_vl_inputs, tiny_llava, tiny_qwen2_vl

from .helpers import BATCH, MLLAMA_BATCH

pytestmark = pytest.mark.usefixtures("capture_once")  # one capture per session model (conftest)

FASTV = gp.FastV(k=2, keep=0.5)
TRIMS = [gp.CrossAttentionTrim(keep=0.5, select=select) for select in ("head_union", "topk")]
QWEN2_VL_BATCH = [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3), (5, [], [], 2)]  # 16 | 8 + 16 | 0 visual
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def qwen2_vl():
    return tiny_qwen2_vl()


@dataclass(frozen=True)
class Case:
    model: str  # its fixture
    method: gp.FastV | gp.CrossAttentionTrim
    inputs: Callable  # (model, samples) -> inputs
    samples: list  # a left-padded batch with visual input
    text_only: list  # a left-padded batch without


CASES = {
    "llava-fastv": Case("llava", FASTV, llava_inputs, BATCH, [(7, 0, 3), (4, 0, 2)]),
    "qwen2-vl-fastv": Case("qwen2_vl", FASTV, qwen2_vl_inputs, QWEN2_VL_BATCH, [(6, [], [], 3), (3, [], [], 2)]),
    "mllama-head_union": Case("mllama", TRIMS[0], mllama_inputs, MLLAMA_BATCH, [(4, [], 3), (6, [], 2)]),
    "mllama-topk": Case("mllama", TRIMS[1], mllama_inputs, MLLAMA_BATCH, [(4, [], 3), (6, [], 2)]),
}
SLOW_DTYPE_CASES = ("qwen2-vl-fastv", "mllama-head_union")  # the fast tier: one case per method


def _case(request, name: str, batch: str = "samples"):
    """``(model, method, inputs)`` of case ``name`` with its ``samples`` or ``text_only`` batch; the models
    are the session's (Qwen2-VL: this module's)."""
    case = CASES[name]
    model = request.getfixturevalue(case.model)
    return model, case.method, case.inputs(model, getattr(case, batch))


def _same_report(report, expected) -> None:
    assert [k.tolist() for k in report.kept] == [k.tolist() for k in expected.kept]
    assert (report.n_visual, report.n_tokens) == (expected.n_visual, expected.n_tokens)
    assert (report.flops_before, report.flops_after) == (expected.flops_before, expected.flops_after)
    assert (report.kv_bytes_before, report.kv_bytes_after) == (expected.kv_bytes_before, expected.kv_bytes_after)


def _one_line_refusal(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.startswith("graphprune")
    return message


# --- item 6: explain reports the call it made ------------------------------------------------------


@torch.no_grad()
def test_explain_reports_its_own_call_while_another_thread_runs_forwards(llava, batch):
    other = llava_inputs(llava, [(1, 2, 1), (4, 1, 0)], seed=7)  # another batch size, length and visual counts
    with optimized(llava, FASTV):
        expected = gp.explain(llava, **batch)
        stop, forwards = threading.Event(), []

        def forward_loop():
            while not stop.is_set():
                llava(**other)
                forwards.append(1)

        thread = threading.Thread(target=forward_loop)
        thread.start()
        try:
            reports = [gp.explain(llava, **batch) for _ in range(40)]
        finally:
            stop.set()
            thread.join()
    assert len(forwards) >= 5  # the other thread really ran forwards meanwhile
    for report in reports:
        _same_report(report, expected)


# --- item 7: attention_mask of any dtype -----------------------------------------------------------


@pytest.mark.parametrize(
    "case", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_DTYPE_CASES else name for name in CASES]
)
@torch.no_grad()
def test_attention_mask_of_any_dtype_gives_what_a_long_mask_gives(request, case):
    model, method, inputs = _case(request, case)
    with optimized(model, method):
        logits = model(**inputs).logits
        ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        report = gp.explain(model, **inputs)
        for dtype in (torch.int32, torch.bool, torch.float32, torch.float16):
            cast = inputs | {"attention_mask": inputs["attention_mask"].to(dtype)}
            assert torch.equal(model(**cast).logits, logits), dtype
            assert torch.equal(model.generate(**cast, max_new_tokens=NEW_TOKENS, do_sample=False), ids), dtype
            _same_report(gp.explain(model, **cast), report)


# --- item 9: a sample whose attention mask is all zeros is empty ----------------------------------


@torch.no_grad()
def test_fastv_sample_with_an_all_zero_mask_is_empty_in_explain_forward_and_generate(llava, batch):
    empty = batch | {"attention_mask": batch["attention_mask"].clone()}
    empty["attention_mask"][0] = 0  # sample 0 holds an image
    with optimized(llava, FASTV):
        full = gp.explain(llava, **batch)
        full_ids = llava.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
        report = gp.explain(llava, **empty)
        llava(**empty)
        ids = llava.generate(**empty, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert (report.kept[0].tolist(), report.n_visual[0], report.n_tokens[0], report.n_kept[0]) == ([], 0, 0, 0)
    assert [k.tolist() for k in report.kept[1:]] == [k.tolist() for k in full.kept[1:]]
    assert report.n_visual[1:] == full.n_visual[1:] and report.n_tokens[1:] == full.n_tokens[1:]
    sample_0 = gp.flops(llava.config, FASTV, full.n_tokens[0], full.n_visual[0])
    assert gp.flops(llava.config, FASTV, 0, 0) == (0, 0)  # the formula for an empty sample
    assert (report.flops_before, report.flops_after) == (
        full.flops_before - sample_0[0],
        full.flops_after - sample_0[1],
    )
    assert torch.equal(ids[1:], full_ids[1:])


@pytest.mark.parametrize("method", TRIMS, ids=str)
@torch.no_grad()
def test_trim_sample_with_an_all_zero_mask_is_empty_in_explain(mllama, mllama_batch, method):
    empty = mllama_batch | {"attention_mask": mllama_batch["attention_mask"].clone()}
    empty["attention_mask"][0] = 0
    with optimized(mllama, method):
        full = gp.explain(mllama, **mllama_batch)
        report = gp.explain(mllama, **empty)
        mllama.generate(**empty, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert (report.kept[0].tolist(), report.n_visual[0], report.n_tokens[0]) == ([], 0, 0)
    assert report.kept_per_tile[0].sum() == 0
    assert [k.tolist() for k in report.kept[1:]] == [k.tolist() for k in full.kept[1:]]


# --- item 14: text-only prompts, every method, every entry point ----------------------------------


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_text_only_prompt_is_unmodified_and_explain_reports_nothing_kept(request, case):
    model, method, text = _case(request, case, "text_only")
    expected = model(**text).logits
    expected_ids = model.generate(**text, max_new_tokens=NEW_TOKENS, do_sample=False)
    with optimized(model, method):
        assert torch.equal(model(**text).logits, expected)
        assert torch.equal(model.generate(**text, max_new_tokens=NEW_TOKENS, do_sample=False), expected_ids)
        report = gp.explain(model, **text)
    lengths = text["attention_mask"].sum(-1).tolist()
    assert report.n_tokens == lengths and report.n_visual == [0, 0] and report.n_kept == [0, 0]
    assert report.scores is None
    assert report.flops_after == report.flops_before == sum(gp.flops(model.config, method, n, 0)[0] for n in lengths)
    assert report.kv_bytes_after == report.kv_bytes_before
    assert all(gp.flops(model.config, method, n, 0)[0] == gp.flops(model.config, method, n, 0)[1] for n in lengths)
    assert "kept 0/0" in str(report)


# --- item 15: right padding ------------------------------------------------------------------------


def _right_padded(inputs: dict) -> dict:
    """``inputs`` (left-padded) with every sample's tokens moved to the front: the padding on the right."""
    out = dict(inputs)
    pads = (inputs["attention_mask"] == 0).sum(-1).tolist()
    for name in ("input_ids", "attention_mask", "mm_token_type_ids", "cross_attention_mask"):
        if name in inputs:
            out[name] = torch.stack([row.roll(-pad, dims=0) for row, pad in zip(inputs[name], pads, strict=True)])
    return out


@pytest.mark.parametrize("case", CASES)
@torch.no_grad()
def test_right_padded_batch_is_refused_where_graphprune_prunes(request, case):
    model, method, inputs = _case(request, case)
    right = _right_padded(inputs)
    assert (right["attention_mask"][:, -1] == 0).any()
    with optimized(model, method):
        logits = model(**inputs).logits
        for call in (model, functools.partial(gp.explain, model), functools.partial(model.generate, max_new_tokens=2)):
            with pytest.raises(ValueError, match="right-padded") as error:
                call(**right)
            assert 'padding_side="left"' in _one_line_refusal(error)
        assert torch.equal(model(**inputs).logits, logits)  # left padding still runs, the model untouched


@torch.no_grad()
def test_batches_without_right_padding_are_never_refused(llava):
    unpadded = llava_inputs(llava, [(5, 1, 4), (5, 1, 4)], seed=3)
    assert bool(unpadded["attention_mask"].all())
    with optimized(llava, FASTV):
        assert gp.explain(llava, **unpadded).n_kept == [8, 8]
        llava.generate(**unpadded, max_new_tokens=2)


@pytest.mark.parametrize("keep", [1.0, 0.5])
@torch.no_grad()
def test_right_padded_batch_with_nothing_to_prune_runs_the_unmodified_model(llava, batch, keep):
    right = _right_padded(batch if keep == 1.0 else llava_inputs(llava, [(7, 0, 3), (4, 0, 2)]))
    expected = llava(**right).logits
    expected_ids = llava.generate(**right, max_new_tokens=NEW_TOKENS, do_sample=False)
    with optimized(llava, gp.FastV(k=2, keep=keep)):
        assert torch.equal(llava(**right).logits, expected)
        assert torch.equal(llava.generate(**right, max_new_tokens=NEW_TOKENS, do_sample=False), expected_ids)


@pytest.mark.slow
def test_ort_generator_refuses_right_padding_as_pytorch_does(tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
    model = tiny_llava(num_layers=2, seed=2)
    inputs = llava_inputs(model, BATCH)
    with optimized(model, gp.FastV(k=1, keep=0.5)):
        generator = gp.export.OrtGenerator(gp.export.onnx(model, tmp_path / "llava", example_inputs=inputs))
        with pytest.raises(ValueError, match="right-padded") as error:
            generator.generate(**_right_padded(inputs), max_new_tokens=2)
        assert 'padding_side="left"' in _one_line_refusal(error)
        expected = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert torch.equal(generator.generate(**inputs, max_new_tokens=2), expected)
