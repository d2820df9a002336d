"""The in-place entry point: ``optimize`` swaps a model's decoder forward for the pruned graphs, ``restore`` undoes it.

After ``optimize`` the model's own ``forward`` still runs (vision tower, projector, LM head, HF
``generate``); these instance attributes are added:

- ``model.forward``: the original forward inside a context that records which positions are visual
  (the decoder sees only embeddings, the visual mask comes from the input ids);
- ``decoder.forward``: the method's decoder stand-in (``graphprune/decoders/``), which runs the pruned
  prefill graph on a fresh cache and the decode graph on a cache it pruned, and the original decoder
  forward otherwise (nothing to prune, or a cache it did not fill);
- ``model.generate``: HF generate for the supported generation modes only (``generation_checks``);
- ``model.__deepcopy__`` and ``model.__reduce_ex__``: an independent optimized deep copy, no pickling
  (``model_copy``);
- ``model._graphprune``: the ``OptimizedState`` (``optimized_state(model)``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .decoders import GraphDecoder
from .decoders.base import ModelCall, current_call
from .decoders.static_decode import COMPILED_PREFILL
from .generation_checks import checked_generate
from .methods import CrossAttentionTrim, FastV
from .model_copy import plain_deepcopy, refuse_pickle
from .models import DecoderLayout, ModelAdapter, adapter_for
from .registry import MethodHandler, handler_for

logger = logging.getLogger(__name__)

STATE_ATTR = "_graphprune"
_prefill_sink: contextvars.ContextVar[list | None] = contextvars.ContextVar("graphprune_prefill_sink", default=None)


def optimize(model: nn.Module, method: FastV | CrossAttentionTrim, *, compile: bool = False) -> nn.Module:
    """Prune ``model``'s visual tokens with ``method``, in place; returns the model.

    The decoder is captured as FX graphs, rewritten by the method's passes, and run instead of the
    decoder's forward (under ``torch.compile`` with inductor if ``compile=True``). Nothing is
    changed when an argument is wrong. ``graphprune.restore(model)`` undoes it.
    """
    adapter, layout, handler = _check(model, method)
    stand_in = adapter.stand_in(handler.decoder)(adapter.decoder(model), method, layout, compile, handler=handler)
    _install(model, adapter, stand_in)
    logger.info("graphprune: %s on %s (%s)", method, type(model).__name__, "compiled" if compile else "eager")
    return model


def restore(model: nn.Module) -> nn.Module:
    """Undo ``optimize``: every instance attribute it set (forward, generate, the copy hooks, the
    decoder's forward) is what it was; returns the model."""
    state = optimized_state(model)
    for (module, name), value in state.saved_attributes.items():
        if value is None:
            delattr(module, name)
        else:
            setattr(module, name, value)
    return model


@contextlib.contextmanager
def optimized(model: nn.Module, method: FastV | CrossAttentionTrim, *, compile: bool = False) -> Iterator[nn.Module]:
    """``with graphprune.optimized(model, method):`` the model optimized inside the block, restored after it
    (also when the block raises)."""
    optimize(model, method, compile=compile)
    try:
        yield model
    finally:
        restore(model)


def last_record(model: nn.Module):
    """The record of the optimized model's latest prefill, run by any thread (None before the first):
    FastV's ``PrefillRecord`` or CrossAttentionTrim's ``TrimRecord`` (``graphprune/decoders/``).
    ``explain`` reports one call's own record."""
    return optimized_state(model).last_record


@dataclass
class OptimizedState:
    """What ``optimize`` set up on a model, and the record of its latest prefill."""

    method: FastV | CrossAttentionTrim
    handler: MethodHandler  # the method's, looked up once by optimize (``registry.handler_for``)
    adapter: ModelAdapter
    layout: DecoderLayout
    decoder: GraphDecoder  # the stand-in for the decoder's forward
    saved_attributes: dict  # (module, name) -> its own instance attribute before optimize (None if it had none)
    last_record: object = None  # of any thread: recorded_prefills collects one thread's

    def record(self, record) -> None:
        """Called by the stand-in at each prefill."""
        self.last_record = record
        sink = _prefill_sink.get()
        if sink is not None:
            sink.append(record)


def optimized_state(model: nn.Module) -> OptimizedState:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise ValueError("this model is not optimized by graphprune; call graphprune.optimize(model, method) first")
    return state


@contextlib.contextmanager
def recorded_prefills():
    """Collects the record of every prefill that this thread runs inside the block (contextvars are per
    thread), whatever other threads run meanwhile; ``explain`` reads its own call's record from it."""
    records: list = []
    token = _prefill_sink.set(records)
    try:
        yield records
    finally:
        _prefill_sink.reset(token)


def _check(model: nn.Module, method) -> tuple[ModelAdapter, DecoderLayout, MethodHandler]:
    """The model's adapter and decoder layout and the method's handler, once ``model`` and ``method`` are checked
    to fit."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"graphprune.optimize expects a transformers model (torch.nn.Module); got {type(model).__name__}"
        )
    if hasattr(model, STATE_ATTR):
        raise RuntimeError(
            "this model is already optimized by graphprune; call graphprune.restore(model) before optimizing it again"
        )
    handler = handler_for(method)
    adapter = adapter_for(model)
    if not isinstance(method, adapter.methods):
        fits = ", ".join(m.__name__ for m in adapter.methods)
        raise ValueError(
            f"{type(method).__name__} does not fit {type(model).__name__} ({adapter.name}): "
            f"this model family takes {fits}"
        )
    layout = adapter.layout(model)
    handler.check_layout(method, layout)
    if model.training:
        raise ValueError("graphprune optimizes inference; call model.eval() before graphprune.optimize")
    return adapter, layout, handler


def _install(model: nn.Module, adapter: ModelAdapter, pruned: GraphDecoder) -> None:
    """Set the instance attributes that run ``model`` with ``pruned`` in place of its decoder's forward."""
    decoder = pruned.decoder
    saved = {(module, name): module.__dict__.get(name) for module, name in _replaced_attributes(model, decoder)}
    forward = model.forward
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def forward_with_visual_mask(*args, **kwargs):
        if torch.compiler.is_compiling():  # a compiled step: the stand-in reads its state off the cache
            if pruned.method.keep < 1.0 and any(
                name.startswith("pixel_values") and value is not None for name, value in kwargs.items()
            ):
                raise ValueError(COMPILED_PREFILL.format("images"))
            return forward(*args, **kwargs)
        bound = signature.bind_partial(*args, **kwargs).arguments
        if bound.get("labels") is not None:
            raise ValueError(
                "graphprune prunes the prefill and returns no loss; call graphprune.restore(model) to train"
            )
        visual = functools.partial(adapter.visual_mask, model, bound.get("input_ids"), bound.get("inputs_embeds"))
        token = current_call.set(ModelCall(bound, visual))
        try:
            return forward(*args, **kwargs)
        finally:
            current_call.reset(token)

    def deepcopy_optimized(memo):
        clone = plain_deepcopy(model, memo, saved)
        _install(clone, adapter, pruned.rebound(adapter.decoder(clone), memo))
        return clone

    model.forward = forward_with_visual_mask
    model.generate = checked_generate(model, model.generate, pruned.method)
    model.__deepcopy__ = deepcopy_optimized
    model.__reduce_ex__ = refuse_pickle
    decoder.forward = pruned
    pruned.state = OptimizedState(pruned.method, pruned.handler, adapter, pruned.layout, pruned, saved)
    setattr(model, STATE_ATTR, pruned.state)


def _replaced_attributes(model: nn.Module, decoder: nn.Module) -> tuple[tuple[nn.Module, str], ...]:
    """The instance attributes ``optimize`` sets and ``restore`` puts back."""
    names = ("forward", "generate", "__deepcopy__", "__reduce_ex__", STATE_ATTR)
    return (*((model, name) for name in names), (decoder, "forward"))
