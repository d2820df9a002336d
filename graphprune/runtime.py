"""The in-place entry point: ``optimize`` swaps a model's decoder forward for the pruned graphs, ``restore`` undoes it.

After ``optimize`` the model's own ``forward`` still runs (vision tower, projector, LM head, HF
``generate``); these instance attributes are added:

- ``model.forward``: the original forward inside a context that records which positions are visual
  (the decoder sees only embeddings, the visual mask comes from the input ids);
- ``decoder.forward``: ``PrunedDecoder``, which runs the FastV prefill graph on a fresh cache and
  the decode graph on a cache it pruned, and the original decoder forward otherwise (nothing to
  prune, or a cache it did not fill);
- ``model.generate``: HF generate for the supported generation modes only (``generation_checks``);
- ``model.__deepcopy__`` and ``model.__reduce_ex__``: an independent optimized deep copy, no pickling
  (``model_copy``).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import inspect
import logging
import weakref
from dataclasses import dataclass

import torch
from torch import fx, nn
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast

from . import ops
from .capture import capture_decode, capture_prefill
from .generation_checks import checked_generate
from .graph_cache import GraphCache, capturing
from .methods import CrossAttentionTrim, FastV
from .model_copy import plain_deepcopy, refuse_part_copy, refuse_pickle
from .models import DecoderLayout, ModelAdapter, adapter_for
from .padding import normalized_attention_mask, refuse_right_padding
from .passes import cross_attention_trim, cross_attention_trim_decode, fastv, fastv_decode

logger = logging.getLogger(__name__)

STATE_ATTR = "_graphprune"
_visual_mask: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "graphprune_visual_mask", default=None
)
_prefill_sink: contextvars.ContextVar[list | None] = contextvars.ContextVar("graphprune_prefill_sink", default=None)


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


@dataclass
class PrefillRecord:
    """What a pruned (or unpruned) prefill saw and chose; ``explain`` reads it."""

    visual_mask: torch.Tensor  # [B, N]
    attention_mask: torch.Tensor  # [B, N]
    keep_index: torch.Tensor  # [B, S]: original position per slot
    slot_valid: torch.Tensor  # [B, S]
    scores: torch.Tensor | None  # [B, N]; None when nothing was pruned


def _check_call(attention_mask: torch.Tensor | None, kwargs: dict) -> None:
    requested = [name for name in ("output_attentions", "output_hidden_states") if kwargs.get(name)]
    if requested:
        raise ValueError(
            f"graphprune's pruned decoder does not return {', '.join(requested)}; call graphprune.restore(model) first"
        )
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            f"graphprune needs a 2-D attention_mask [batch, length]; got shape {tuple(attention_mask.shape)}"
        )


def _checked_decode_mask(attention_mask: torch.Tensor | None, batch: int, past: int, new_tokens: int, device):
    if attention_mask is None:
        return torch.ones(batch, past + new_tokens, dtype=torch.long, device=device)
    if attention_mask.shape[1] != past + new_tokens:
        raise ValueError(
            f"attention_mask covers {attention_mask.shape[1]} positions; the cache holds {past} and "
            f"{new_tokens} are new, so it must cover {past + new_tokens}"
        )
    return attention_mask


@dataclass
class _PrunedCache:
    index: torch.Tensor  # [B, P']: original position of each slot of the layers >= k
    valid: torch.Tensor  # [B, P']


class _GraphDecoder:
    """What the stand-ins for a decoder's ``forward`` share: the pruned prefill and decode graphs per dtype
    and device of the decoder (under ``torch.compile`` on request), the original forward, and the state of
    each cache they filled. ``graphs`` (placement -> graphs) is given for a deep copy, captured now otherwise."""

    def __init__(self, decoder: nn.Module, method, layout: DecoderLayout, compile: bool, graphs: dict | None = None):
        self.decoder = decoder
        self.method = method
        self.layout = layout
        self.graphs = GraphCache(decoder, self._capture, compile, graphs)
        self.graphs.graphs()
        self._original = decoder.forward  # before optimize replaces it (keeps e.g. accelerate hooks)
        self._cache_states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.last_prefill: PrefillRecord | TrimRecord | None = None  # of any thread: use recorded_prefills

    def _record(self, record: PrefillRecord | TrimRecord) -> None:
        self.last_prefill = record
        sink = _prefill_sink.get()
        if sink is not None:
            sink.append(record)

    def _capture(self) -> tuple[fx.GraphModule, fx.GraphModule]:
        """The decoder's prefill and decode graphs, rewritten by the method's passes."""
        raise NotImplementedError

    def __deepcopy__(self, memo):
        refuse_part_copy()

    def __reduce_ex__(self, protocol):
        refuse_part_copy()

    def __call__(self, *args, **kwargs):
        if capturing(self.decoder):  # a capture at a new dtype or device traces the decoder's own forward
            return self._original(*args, **kwargs)
        return self._run(*args, **kwargs)

    @property
    def prefill_graph(self) -> fx.GraphModule:
        return self.graphs.graphs()[0]

    @property
    def decode_graph(self) -> fx.GraphModule:
        return self.graphs.graphs()[1]

    def rebound(self, decoder: nn.Module, memo: dict) -> _GraphDecoder:
        """This stand-in for ``decoder``, a deep copy of this one's decoder made with ``memo``."""
        layout, graphs = copy.deepcopy(self.layout, memo), self.graphs.copied_graphs(memo)
        return type(self)(decoder, self.method, layout, self.graphs.compile, graphs)

    def _embeddings(self, input_ids, inputs_embeds, attention_mask, use_cache, kwargs) -> tuple[torch.Tensor, bool]:
        """The checked call's input embeddings and whether it caches."""
        if self.decoder.training:
            raise RuntimeError(
                "graphprune: the optimized model is in training mode; call model.eval() to run it, "
                "or graphprune.restore(model) to train it"
            )
        _check_call(attention_mask, kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.decoder.get_input_embeddings()(input_ids)
        return inputs_embeds, self.decoder.config.use_cache if use_cache is None else use_cache


class PrunedDecoder(_GraphDecoder):
    """Stands in for the decoder's ``forward``: pruned prefill graph, pruned-cache decode graph."""

    def __init__(self, decoder: nn.Module, method: FastV, layout: DecoderLayout, compile: bool, graphs=None):
        super().__init__(decoder, method, layout, compile, graphs)
        self.num_layers = len(decoder.layers)
        self.position_rows = layout.position_rows

    def _capture(self):
        prefill = fastv(capture_prefill(self.decoder, self.layout), self.method)
        return prefill, fastv_decode(capture_decode(self.decoder, self.layout), self.method)

    def _run(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        attention_mask = normalized_attention_mask(attention_mask)
        inputs_embeds, use_cache = self._embeddings(input_ids, inputs_embeds, attention_mask, use_cache, kwargs)
        args = dict(attention_mask=attention_mask, position_ids=position_ids, past_key_values=past_key_values)
        if past_key_values is not None and past_key_values.get_seq_length() > 0:
            state = self._cache_states.get(past_key_values)
            if state is None:
                return self._original(inputs_embeds=inputs_embeds, use_cache=use_cache, **args, **kwargs)
            return self._decode_step(inputs_embeds, attention_mask, position_ids, past_key_values, state)
        return self._prefill_step(inputs_embeds, attention_mask, position_ids, past_key_values, use_cache, kwargs)

    def _prefill_step(self, inputs_embeds, attention_mask, position_ids, cache, use_cache, kwargs):
        batch, seq_len = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        mask = (
            attention_mask
            if attention_mask is not None
            else torch.ones(batch, seq_len, dtype=torch.long, device=device)
        )
        visual = _visual_mask.get()
        if visual is None or visual.shape != (batch, seq_len):
            visual = torch.zeros(batch, seq_len, dtype=torch.bool, device=device)
        visual = visual.to(device) & mask.bool()  # padding is not visual: an all-padding sample is empty
        dropped = visual.sum(dim=-1) - ops.keep_counts(visual, self.method.keep)
        if int(dropped.max()) == 0:  # keep=1.0 or no visual token: the unmodified model, exactly
            out = self._original(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=use_cache,
                **kwargs,
            )
            every = torch.arange(seq_len, device=device).expand(batch, seq_len)
            self._record(PrefillRecord(visual, mask, every, torch.ones_like(visual), None))
            return out
        refuse_right_padding(mask)
        position_ids = self._graph_positions(position_ids, batch, 0, seq_len, device)
        slots = torch.arange(int((mask.sum(dim=-1) - dropped).max()), device=device)
        outputs = self.graphs.runners()[0](inputs_embeds, mask, position_ids, visual, slots)
        hidden, cached = outputs[0], outputs[1 : 1 + 2 * self.num_layers]
        index, valid, scores = outputs[-3:]
        self._record(PrefillRecord(visual, mask, index, valid, scores))
        if not use_cache:
            return BaseModelOutputWithPast(last_hidden_state=hidden)
        cache = cache if cache is not None else DynamicCache(config=self.decoder.config)
        for layer_idx in range(self.num_layers):
            cache.update(cached[2 * layer_idx], cached[2 * layer_idx + 1], layer_idx)
        self._cache_states[cache] = _PrunedCache(index, valid)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache)

    def _graph_positions(self, position_ids, batch, start, length, device):
        """Position ids in the captured graphs' form: ``[B, T]``, or ``[R, B, T]`` for R RoPE rows (M-RoPE).

        ``None`` means ``start .. start + length - 1``, as the decoder itself would count. For an
        M-RoPE decoder, 2-D ids are the same in every row, and one row more than R is HF generate's
        leading text row: the decoder reads it only to detect packed sequences when it has no
        attention mask, and the graphs always get one, so it is dropped.
        """
        if position_ids is None:
            position_ids = torch.arange(start, start + length, device=device)[None]
        rows = self.position_rows
        if not rows:
            return position_ids.expand(batch, length)
        if position_ids.dim() == 2:
            position_ids = position_ids[None]
        elif position_ids.shape[0] == rows + 1:
            position_ids = position_ids[1:]
        return position_ids.expand(rows, batch, length)

    def _decode_step(self, inputs_embeds, attention_mask, position_ids, cache, state: _PrunedCache):
        batch, new_tokens = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past = cache.get_seq_length()  # layer 0 is never pruned: the unpruned length
        attention_mask = _checked_decode_mask(attention_mask, batch, past, new_tokens, device)
        position_ids = self._graph_positions(position_ids, batch, past, new_tokens, device)
        flat_cache = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        decode = self.graphs.runners()[1]
        outputs = decode(inputs_embeds, attention_mask, position_ids, *flat_cache, state.index, state.valid)
        for layer_idx, layer in enumerate(cache.layers):
            layer.keys, layer.values = outputs[1 + 2 * layer_idx], outputs[2 + 2 * layer_idx]
        new_positions = torch.arange(past, past + new_tokens, device=device).expand(batch, new_tokens)
        state.index = torch.cat([state.index, new_positions], dim=1)
        state.valid = torch.cat([state.valid, torch.ones_like(new_positions, dtype=torch.bool)], dim=1)
        return BaseModelOutputWithPast(last_hidden_state=outputs[0], past_key_values=cache)


@dataclass
class TrimRecord:
    """What the last cross-attention prefill saw and kept; ``explain`` reads it."""

    attention_mask: torch.Tensor  # [B, T]
    valid_features: torch.Tensor  # [B, F]: features some valid text row may attend
    keep_index: torch.Tensor  # [B, K']: feature per slot of the trimmed layers
    slot_valid: torch.Tensor  # [B, K']
    scores: torch.Tensor | None  # [B, H, F]; None when nothing was trimmed


class TrimmedDecoder(_GraphDecoder):
    """Stands in for a cross-attention decoder's ``forward`` (Mllama): trimmed prefill graph, and the
    decode graph on a cache whose later cross-attention layers hold only the kept features."""

    def __init__(
        self, decoder: nn.Module, method: CrossAttentionTrim, layout: DecoderLayout, compile: bool, graphs=None
    ):
        super().__init__(decoder, method, layout, compile, graphs)
        self.num_layers = layout.num_layers
        self.cross_attention_layers = layout.cross_attention_layers
        self.text_layer = layout.self_attention_layers[0]  # caches text positions, never trimmed

    def _capture(self):
        prefill = cross_attention_trim(capture_prefill(self.decoder, self.layout), self.method)
        return prefill, cross_attention_trim_decode(capture_decode(self.decoder, self.layout), self.method)

    def _run(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cross_attention_states=None,
        cross_attention_mask=None,
        full_text_row_masked_out_mask=None,
        past_key_values=None,
        inputs_embeds=None,
        use_cache=None,
        **kwargs,
    ):
        attention_mask = normalized_attention_mask(attention_mask)
        inputs_embeds, use_cache = self._embeddings(input_ids, inputs_embeds, attention_mask, use_cache, kwargs)
        args = dict(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cross_attention_states=cross_attention_states,
            cross_attention_mask=cross_attention_mask,
            full_text_row_masked_out_mask=full_text_row_masked_out_mask,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
        )
        if past_key_values is not None and past_key_values.get_seq_length(self.text_layer) > 0:
            state = self._cache_states.get(past_key_values)
            if state is None:
                return self._original(**args, **kwargs)
            if cross_attention_states is not None:
                raise ValueError(
                    "graphprune: new images in a call that continues a trimmed cache are not supported; "
                    "start a new generation with all images in the prompt"
                )
            return self._decode_step(inputs_embeds, attention_mask, position_ids, args, past_key_values, state)
        if cross_attention_states is None:  # text only: no cross-attention layer runs, nothing is trimmed
            self._record(_text_only_record(inputs_embeds, attention_mask))
            return self._original(**args, **kwargs)
        return self._prefill_step(inputs_embeds, args, kwargs)

    def _cross_masks(self, cross_mask, row_mask, batch: int, new_tokens: int, features: int, like: torch.Tensor):
        """The model's masks, or the ones that mean "every row attends every feature" when absent."""
        if cross_mask is None:
            cross_mask = like.new_zeros(batch, 1, new_tokens, features)
        if row_mask is None:
            row_mask = like.new_ones(batch, 1, new_tokens, 1)
        return cross_mask, row_mask

    def _prefill_step(self, inputs_embeds, args, kwargs):
        batch, seq_len, hidden_size = inputs_embeds.shape
        device = inputs_embeds.device
        states = args["cross_attention_states"].reshape(batch, -1, hidden_size)
        mask = args["attention_mask"]
        mask = mask if mask is not None else torch.ones(batch, seq_len, dtype=torch.long, device=device)
        cross_mask, row_mask = self._cross_masks(
            args["cross_attention_mask"], args["full_text_row_masked_out_mask"], batch, seq_len, states.shape[1], states
        )
        valid = ops.valid_features(cross_mask, row_mask, mask)
        if self.method.keep == 1.0 or not valid.any():  # nothing is trimmed: the unmodified model, exactly
            every = torch.arange(states.shape[1], device=device).expand(batch, -1)
            self._record(TrimRecord(mask, valid, every, valid, None))
            return self._original(**args, **kwargs)
        refuse_right_padding(mask)
        position_ids = args["position_ids"]
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=device)[None]
        inputs = [inputs_embeds, mask, position_ids.expand(batch, seq_len), states, cross_mask, row_mask]
        if self.method.select == "topk":
            inputs.append(torch.arange(int(ops.keep_counts(valid, self.method.keep).max()), device=device))
        outputs = self.graphs.runners()[0](*inputs)
        hidden, cached = outputs[0], outputs[1 : 1 + 2 * self.num_layers]
        index, slot_valid, scores = outputs[-3:]
        self._record(TrimRecord(mask, valid, index, slot_valid, scores))
        if not args["use_cache"]:
            return BaseModelOutputWithPast(last_hidden_state=hidden)
        cache = args["past_key_values"]
        cache = cache if cache is not None else DynamicCache(config=self.decoder.config)
        for layer_idx in range(self.num_layers):
            cache.update(cached[2 * layer_idx], cached[2 * layer_idx + 1], layer_idx)
        self._cache_states[cache] = _PrunedCache(index, slot_valid)
        return BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache)

    def _decode_step(self, inputs_embeds, attention_mask, position_ids, args, cache, state: _PrunedCache):
        batch, new_tokens = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        past = cache.get_seq_length(self.text_layer)
        attention_mask = _checked_decode_mask(attention_mask, batch, past, new_tokens, device)
        if position_ids is None:
            position_ids = torch.arange(past, past + new_tokens, device=device)[None]
        features = cache.layers[self.cross_attention_layers[0]].keys.shape[2]
        masks = args["cross_attention_mask"], args["full_text_row_masked_out_mask"]
        cross_mask, row_mask = self._cross_masks(*masks, batch, new_tokens, features, inputs_embeds)
        flat_cache = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        outputs = self.graphs.runners()[1](
            inputs_embeds,
            attention_mask,
            position_ids.expand(batch, new_tokens),
            cross_mask,
            row_mask,
            *flat_cache,
            state.index,
            state.valid,
        )
        for layer_idx, layer in enumerate(cache.layers):
            layer.keys, layer.values = outputs[1 + 2 * layer_idx], outputs[2 + 2 * layer_idx]
        return BaseModelOutputWithPast(last_hidden_state=outputs[0], past_key_values=cache)


def _text_only_record(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None) -> TrimRecord:
    """A text-only prefill's record: no feature, none kept."""
    batch, seq_len = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    mask = attention_mask if attention_mask is not None else torch.ones(batch, seq_len, dtype=torch.long, device=device)
    none = torch.zeros(batch, 0, dtype=torch.bool, device=device)
    return TrimRecord(mask, none, none.long(), none, None)


@dataclass
class _Optimized:
    method: FastV | CrossAttentionTrim
    adapter: ModelAdapter
    decoder: PrunedDecoder | TrimmedDecoder
    saved_attributes: dict  # (module, name) -> its own instance attribute before optimize (None if it had none)


def _check(model: nn.Module, method) -> ModelAdapter:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"graphprune.optimize expects a transformers model (torch.nn.Module); got {type(model).__name__}"
        )
    if hasattr(model, STATE_ATTR):
        raise RuntimeError(
            "this model is already optimized by graphprune; call graphprune.restore(model) before optimizing it again"
        )
    if not isinstance(method, (FastV, CrossAttentionTrim)):
        raise TypeError(f"method must be graphprune.FastV(...) or graphprune.CrossAttentionTrim(...); got {method!r}")
    adapter = adapter_for(model)
    if not isinstance(method, adapter.methods):
        fits = ", ".join(m.__name__ for m in adapter.methods)
        raise ValueError(
            f"{type(method).__name__} does not fit {type(model).__name__} ({adapter.name}): "
            f"this model family takes {fits}"
        )
    layout = adapter.layout(model)
    if isinstance(method, FastV):
        method.check_layers(layout.num_layers)
    else:
        method.check_cross_attention_layers(layout.cross_attention_layers)
    if model.training:
        raise ValueError("graphprune optimizes inference; call model.eval() before graphprune.optimize")
    return adapter


def optimize(model: nn.Module, method: FastV | CrossAttentionTrim, *, compile: bool = False) -> nn.Module:
    """Prune ``model``'s visual tokens with ``method``, in place; returns the model.

    The decoder is captured as FX graphs, rewritten by the method's passes, and run instead of the
    decoder's forward (under ``torch.compile`` with inductor if ``compile=True``). Nothing is
    changed when an argument is wrong. ``graphprune.restore(model)`` undoes it.
    """
    adapter = _check(model, method)
    decoder = adapter.decoder(model)
    stand_in = PrunedDecoder if isinstance(method, FastV) else TrimmedDecoder
    _install(model, adapter, stand_in(decoder, method, adapter.layout(model), compile))
    logger.info("graphprune: %s on %s (%s)", method, type(model).__name__, "compiled" if compile else "eager")
    return model


def _install(model: nn.Module, adapter: ModelAdapter, pruned: PrunedDecoder | TrimmedDecoder) -> None:
    """Set the instance attributes that run ``model`` with ``pruned`` in place of its decoder's forward."""
    decoder = pruned.decoder
    saved = {(module, name): module.__dict__.get(name) for module, name in _replaced_attributes(model, decoder)}
    forward = model.forward
    signature = inspect.signature(forward)

    @functools.wraps(forward)
    def forward_with_visual_mask(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        if bound.get("labels") is not None:
            raise ValueError(
                "graphprune prunes the prefill and returns no loss; call graphprune.restore(model) to train"
            )
        visual = adapter.visual_mask(model, bound.get("input_ids"), bound.get("inputs_embeds"))
        token = _visual_mask.set(visual)
        try:
            return forward(*args, **kwargs)
        finally:
            _visual_mask.reset(token)

    def deepcopy_optimized(memo):
        clone = plain_deepcopy(model, memo, saved)
        _install(clone, adapter, pruned.rebound(adapter.decoder(clone), memo))
        return clone

    model.forward = forward_with_visual_mask
    model.generate = checked_generate(model, model.generate)
    model.__deepcopy__ = deepcopy_optimized
    model.__reduce_ex__ = refuse_pickle
    decoder.forward = pruned
    setattr(model, STATE_ATTR, _Optimized(pruned.method, adapter, pruned, saved))


def _replaced_attributes(model: nn.Module, decoder: nn.Module) -> tuple[tuple[nn.Module, str], ...]:
    """The instance attributes ``optimize`` sets and ``restore`` puts back."""
    names = ("forward", "generate", "__deepcopy__", "__reduce_ex__", STATE_ATTR)
    return (*((model, name) for name in names), (decoder, "forward"))


def optimized_state(model: nn.Module) -> _Optimized:
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        raise ValueError("this model is not optimized by graphprune; call graphprune.optimize(model, method) first")
    return state


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
