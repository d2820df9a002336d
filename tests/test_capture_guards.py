"""Capture of decoders whose tracing adds shape guards: accepted where they hold for every length, refused where
they restrict it (issue 15's GPU run: Qwen2-VL-7B's prefill capture on CUDA failed on a guard
``min(128*seq, 896*seq) == 128*seq`` that named dims reject, a stride guard of CUDA's SDPA on grouped keys).

A forward pre-hook on the first attention layer makes the guard on this CPU machine; the decoder computes the same.
"""

import pytest
import torch

import graphprune as gp
from graphprune.testing import qwen2_vl_inputs, tiny_qwen2_vl

SAMPLES = [(3, [(4, 4)], [], 4), (1, [(4, 8)], [], 2)]


def _guarding(condition):
    def hook(module, args, kwargs):
        if condition(kwargs["hidden_states"].shape[1]):
            pass

    return hook


def _always_true(n):  # export cannot prove it from the range of n alone, like the CUDA stride guard
    return torch.sym_min(128 * n, 896 * n * n) == 128 * n


def _with_guard(condition):
    model = tiny_qwen2_vl()
    decoder = model.model.language_model
    decoder.layers[0].self_attn.register_forward_pre_hook(_guarding(condition), with_kwargs=True)
    return model


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
@torch.no_grad()
def test_a_guard_that_holds_for_every_length_is_accepted():
    model, plain = _with_guard(_always_true), tiny_qwen2_vl()
    method = gp.FastV(k=2, keep=0.5)
    gp.optimize(model, method)
    gp.optimize(plain, method)
    for samples in (SAMPLES, SAMPLES[:1], [(2, [(8, 8)], [], 7)]):  # other batch sizes and lengths
        inputs = qwen2_vl_inputs(model, samples)
        torch.testing.assert_close(model(**inputs).logits, plain(**inputs).logits, rtol=0, atol=0)
        assert gp.last_record(model).scores is not None  # pruned


@pytest.mark.parametrize("condition", [lambda n: n % 2 == 0, lambda n: n != 5], ids=["even", "not-5"])
def test_a_guard_that_restricts_the_length_is_a_one_line_error(condition):
    model = _with_guard(condition)
    with pytest.raises(RuntimeError, match=r"^graphprune could not capture .*Guard failed: inputs_embeds") as error:
        gp.optimize(model, gp.FastV(k=2, keep=0.5))
    assert "\n" not in str(error.value)
    assert not {"forward", "generate", "_graphprune"} & set(vars(model))
