"""The optimized model runs an unpadded prefill with SDPA in HF's form (no mask) and a padded one with the mask."""

import torch

import graphprune as gp
from graphprune.testing import llava_inputs, tiny_llava


def _decoder_sdpa_masks(fn, heads: int) -> list[list[int]]:
    """The mask shape of every decoder SDPA call of one profiled call ([] for none)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return [
        list(event.input_shapes[3])
        for event in prof.events()
        if event.name == "aten::scaled_dot_product_attention" and event.input_shapes[0][1:2] == [heads]
    ]


def test_unpadded_prefill_calls_sdpa_without_mask_and_a_padded_one_with_it():
    model = gp.optimize(tiny_llava(num_layers=4), gp.FastV(k=2, keep=0.5))
    unpadded = llava_inputs(model, [(5, 1, 4), (3, 1, 6)])
    padded = llava_inputs(model, [(5, 1, 4), (3, 1, 2)])
    with torch.no_grad():
        assert _decoder_sdpa_masks(lambda: model(**unpadded), 4) == [[]] * 4
        assert all(shape != [] for shape in _decoder_sdpa_masks(lambda: model(**padded), 4))
