"""A pruned prefill puts its graph's keys and values into the cache as they are (issue 15 item 2): no copy of the
whole cache onto the fresh layers' empty tensors, and the cache decodes as before."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import graphprune as gp
from graphprune.reference import fastv_reference_generate
from graphprune.testing import llava_inputs, tiny_llava


class EmptyConcatenations(TorchDispatchMode):
    """Counts the ``cat`` calls that take an empty tensor: a copy of the other one."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.cat.default and any(t.numel() == 0 for t in args[0]):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.slow  # fast tier: CONTRIBUTING.md
@torch.no_grad()
def test_pruned_prefill_fills_the_cache_without_copying_it_and_generates_the_references_tokens():
    model = tiny_llava(num_layers=4)
    inputs = llava_inputs(model, [(5, 1, 4), (2, 2, 3)])
    method = gp.FastV(k=2, keep=0.5)
    expected = fastv_reference_generate(model, method, **inputs, max_new_tokens=6)
    with gp.optimized(model, method):
        with EmptyConcatenations() as counted:
            cache = model(**inputs, use_cache=True).past_key_values
        assert counted.count == 0
        assert len(cache.layers) == 4 and cache.layers[-1].keys.shape[2] < cache.layers[0].keys.shape[2]
        assert torch.equal(model.generate(**inputs, max_new_tokens=6, do_sample=False), expected)
