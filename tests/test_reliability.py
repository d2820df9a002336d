"""An optimized model whose weights or hooks change after ``optimize``: replaced weights are captured again (the
tokens of a fresh ``optimize``), an in-place load needs no capture, and hooks the graphs do not run warn once."""

import warnings

import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.testing import llava_inputs, tiny_llava

from .helpers import BATCH

METHOD = gp.FastV(k=2, keep=0.5)
NEW_TOKENS = 6


def _generate(model, inputs):
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)


@pytest.fixture(scope="module")
def reloaded():
    """Another tiny LLaVA (whose state dict each test takes anew: a load with ``assign=True`` marks the one it
    loads so that later loads of it assign too), its non-persistent buffers, its inputs, and the greedy tokens of a
    fresh ``optimize`` of it: what a model reloaded with those weights must give."""
    other = tiny_llava(seed=1)
    buffers = {name: buffer.clone() for name, buffer in other.named_buffers()}
    inputs = llava_inputs(other, BATCH)
    with gp.optimized(other, METHOD), torch.no_grad():
        expected = _generate(other, inputs)
    return other, buffers, inputs, expected


def _load_assigned(model, state_dict, buffers):
    model.load_state_dict(state_dict, assign=True)


def _load_onto_empty(model, state_dict, buffers):
    """How loaders that build on the meta device fill a model: fresh empty tensors, then a load."""
    model.to_empty(device="meta").to_empty(device="cpu")
    model.load_state_dict(state_dict)
    for name, buffer in model.named_buffers():  # the non-persistent ones (RoPE's) are no part of a state dict
        buffer.copy_(buffers[name])


def _replace_parameters(model, state_dict, buffers):
    """The decoder's parameters replaced one by one (``layer.weight = nn.Parameter(...)``); the rest loaded in place."""
    decoder = model.model.language_model
    for name, parameter in list(decoder.named_parameters()):
        owner, _, attribute = name.rpartition(".")
        value = state_dict[f"model.language_model.{name}"].clone()
        setattr(decoder.get_submodule(owner), attribute, nn.Parameter(value, requires_grad=parameter.requires_grad))
    model.load_state_dict(state_dict)


@pytest.mark.parametrize(
    "reload",
    [_load_assigned, *(pytest.param(f, marks=pytest.mark.slow) for f in (_load_onto_empty, _replace_parameters))],
    ids=lambda f: f.__name__,
)
@torch.no_grad()
def test_replaced_weights_give_a_fresh_optimize_tokens(reloaded, reload):
    other, buffers, inputs, expected = reloaded
    model = gp.optimize(tiny_llava(seed=0), METHOD)
    graph = model._graphprune.decoder.prefill_graph
    assert not torch.equal(_generate(model, inputs), expected)  # the weights make a difference
    reload(model, other.state_dict(), buffers)
    assert torch.equal(_generate(model, inputs), expected)
    assert model._graphprune.decoder.prefill_graph is not graph  # captured again


@torch.no_grad()
def test_in_place_load_keeps_the_graphs(reloaded):
    other, _, inputs, expected = reloaded
    model = gp.optimize(tiny_llava(seed=0), METHOD)
    graph = model._graphprune.decoder.prefill_graph
    model.load_state_dict(other.state_dict())
    assert torch.equal(_generate(model, inputs), expected)
    assert model._graphprune.decoder.prefill_graph is graph


@pytest.fixture
def small():
    """A 2-layer tiny LLaVA, optimized (FastV k=1), and its inputs."""
    model = tiny_llava(num_layers=2)
    return gp.optimize(model, gp.FastV(k=1, keep=0.5)), llava_inputs(model, BATCH)


def _steer(module, args, output):
    return output + 1.0


@torch.no_grad()
def test_a_hook_added_after_optimize_warns_once(small):
    model, inputs = small
    model.model.language_model.layers[1].mlp.register_forward_hook(_steer)
    with pytest.warns(UserWarning, match=r"graphprune: forward hooks added to the decoder's layers\.1\.mlp do not run"):
        model(**inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**inputs)  # once


@torch.no_grad()
def test_a_hook_removed_after_optimize_warns():
    model = tiny_llava(num_layers=2)
    handle = model.model.language_model.layers[0].register_forward_pre_hook(lambda module, args: None)
    gp.optimize(model, gp.FastV(k=1, keep=0.5))
    handle.remove()
    removed = r"removed from the decoder's layers\.0 still run.*before graphprune\.optimize"
    with pytest.warns(UserWarning, match=removed):
        model(**llava_inputs(model, BATCH))


@torch.no_grad()
def test_a_hook_registered_before_optimize_is_captured():
    """What the warning advises: a hook that transforms tensors, registered before ``optimize``, is in the graphs
    (keep=1.0: the unmodified model's result with the hook, exactly)."""
    model = tiny_llava(num_layers=2)
    inputs = llava_inputs(model, BATCH)
    model.model.language_model.layers[0].register_forward_hook(_steer)
    expected = model(**inputs).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with gp.optimized(model, gp.FastV(k=1, keep=1.0)):
            assert torch.equal(model(**inputs).logits, expected)


@torch.no_grad()
def test_hf_output_recorders_do_not_warn(small):
    """HF installs inactive output-recording hooks on the decoder's layers the first time its forward is asked for
    hidden states (here the decoder class's own forward, as an unpruned call runs it): they change nothing, so they
    do not warn."""
    model, inputs = small
    decoder = model.model.language_model
    type(decoder).forward(decoder, inputs_embeds=torch.randn(1, 4, 64), output_hidden_states=True)
    assert decoder.layers[0]._forward_hooks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**inputs)
