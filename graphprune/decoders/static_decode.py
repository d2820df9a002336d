"""The one-token decode step over HF's whole static buffers, for HF's compiled generate and ``torch.compile``.

Every shape is static (the step reads each layer's whole ``[B, H, M, D]`` buffer), nothing is read on the host, and
the state is an attribute of the cache object (set by the eager prefill), so Dynamo traces the step in one graph.
The step runs the key-mask decode graph (``capture.key_mask_decode``) on the first ``M - 1`` slots of every buffer
with the new position last; its key masks are computed in the step from the step's mask (by position: layers < k
hold position p in slot p) and tensors stored at the prefill: the kept slots' validity (layers >= k hold the kept
positions first, then the later ones in order) and how many slots each group holds. The new keys and
values are then written in place at that count (the kept slots are left-padded to the batch's most kept, so every
row of a group writes the same slot).

A trimmed cross-attention decoder (Mllama, ``StaticCrossDecode``) runs its own decode graph the same way: the
self-attention layers hold position p in slot p (the new one written at the held count), the first cross-attention
layer its features, and the later ones their kept features first: the graph reads those layers' whole buffers, with
the slot index and validity grown to them (False after the kept), so the step's shapes do not depend on how many the
prefill kept (``select="head_union"`` too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from .. import ops

# the attribute of a cache that a pruned prefill filled: a ``StaticDecode``, or why a compiled step can't continue it
STATE_ATTR = "_graphprune_static_decode"
# the attribute that keeps the latest ``StaticDecode`` of a cache, whose tensors a later prefill reuses
TENSORS_ATTR = "_graphprune_static_decode_tensors"

COMPILED_PREFILL = (
    "graphprune prunes the prompt eagerly and compiles only one-token decode steps over a static cache; "
    "this compiled call feeds {}: run the prefill uncompiled (HF's compiled generate does)"
)
NOT_STATIC = (
    "graphprune compiles decode steps only over a static cache (cache_implementation='static' or a StaticCache) "
    "that a FastV, DART or CrossAttentionTrim prefill filled; this {} was filled by {}: run the decode steps "
    "uncompiled (no compile_config)"
)

NO_STEP = (
    "graphprune has no compiled one-token step for this decoder and method (Gemma 3's sliding-window and image-block "
    "masks, PyramidDrop's several pruned stages); this {} was filled by {}: run the decode steps uncompiled "
    "(no compile_config)"
)


@dataclasses.dataclass
class StaticDecode:
    """What the compiled one-token step over a static cache reads."""

    step: Callable  # the key-mask decode graph's runner
    unpruned_layers: int  # k: the layers below hold every position, the others the kept slots
    key_mask_dtype: torch.dtype
    prompt_valid: torch.Tensor  # [B, M] bool: the prompt's real positions, then True
    kept_valid: torch.Tensor  # [B, M] bool: the kept slots' validity, then True
    full_length: torch.Tensor  # 0-d long: positions held by layers < k (where the next one is written)
    pruned_length: torch.Tensor  # 0-d long: slots held by layers >= k
    kept_count: torch.Tensor  # 0-d long: slots the prefill kept (P'), before those of later positions

    def follow(self, lengths: list[int]) -> None:
        """The counts after an eager step that left the layers holding ``lengths``."""
        self.full_length.fill_(lengths[0])
        self.pruned_length.fill_(lengths[-1])


@dataclasses.dataclass
class StaticCrossDecode:
    """What the compiled one-token step of a trimmed cross-attention decoder over a static cache reads."""

    step: Callable  # the decode graph's runner
    text_layers: tuple[int, ...]  # the self-attention layers: position p in slot p
    first_cross: int  # the cross-attention layer that keeps every feature
    features: int  # how many it holds
    prompt_valid: torch.Tensor  # [B, M] bool: the prompt's real positions, then True
    cache_index: torch.Tensor  # [B, M']: the feature each slot of a later cross-attention layer holds, then 0
    cache_valid: torch.Tensor  # [B, M'] bool: the kept slots' validity, then False
    full_length: torch.Tensor  # 0-d long: positions held by the self-attention layers

    def follow(self, lengths: list[int]) -> None:
        self.full_length.fill_(lengths[self.text_layers[0]])


def forget(cache) -> None:
    """A prefill starts on ``cache``: no compiled step continues an earlier selection held in it."""
    if cache is not None and getattr(cache, STATE_ATTR, None) is not None:
        setattr(cache, STATE_ATTR, None)


def record(cache, method, step: Callable | None, key_mask_dtype, mask, kept_valid) -> None:
    """Set ``cache``'s state after a pruned prefill: a ``StaticDecode`` where ``cache`` is static and ``step``
    (the key-mask decode graph of ``method``, a FastV) exists, else why a compiled step can't continue it.
    ``mask`` ``[B, P]`` is the prompt's padding mask, ``kept_valid`` ``[B, P']`` the kept slots' validity."""
    buffers = cache.layers[0].keys.shape[2] if getattr(cache, "is_compileable", False) else None
    if step is None or buffers is None:
        setattr(cache, STATE_ATTR, (NOT_STATIC if buffers is None else NO_STEP).format(type(cache).__name__, method))
        return

    def length(n: int) -> torch.Tensor:
        return torch.tensor(n, dtype=torch.long, device=mask.device)

    state = StaticDecode(
        step,
        method.k,
        key_mask_dtype,
        _grown(mask.bool(), buffers, True),
        _grown(kept_valid.bool(), buffers, True),
        length(mask.shape[1]),
        length(kept_valid.shape[1]),
        length(kept_valid.shape[1]),
    )
    _store(cache, state)


def record_cross(cache, method, layout, step: Callable | None, mask, index, valid) -> None:
    """Set ``cache``'s state after a trimmed prefill (``method``, a CrossAttentionTrim, on a decoder of ``layout``):
    a ``StaticCrossDecode`` where ``cache`` is static and ``step`` (the decode graph's runner) is given, else why a
    compiled step can't continue it. ``mask`` ``[B, P]`` is the prompt's padding mask, ``index`` and ``valid``
    ``[B, K']`` the kept features' slots."""
    if step is None or not getattr(cache, "is_compileable", False):
        setattr(cache, STATE_ATTR, NOT_STATIC.format(type(cache).__name__, method))
        return
    layers = cache.layers
    first, *later = layout.cross_attention_layers
    text = layout.self_attention_layers
    buffers, slots = layers[text[0]].keys.shape[2], layers[later[0]].keys.shape[2]
    state = StaticCrossDecode(
        step,
        text,
        first,
        int(layers[first].get_seq_length()),
        _grown(mask.bool(), buffers, True),
        _grown(index, slots, 0),
        _grown(valid.bool(), slots, False),
        torch.tensor(mask.shape[1], dtype=torch.long, device=mask.device),
    )
    _store(cache, state)


def _store(cache, state) -> None:
    """``cache``'s state is ``state``, in the tensors of its latest one where they fit (``_in_place``)."""
    setattr(cache, STATE_ATTR, _in_place(getattr(cache, TENSORS_ATTR, None), state))
    setattr(cache, TENSORS_ATTR, getattr(cache, STATE_ATTR))


def _grown(tensor: torch.Tensor, length: int, fill) -> torch.Tensor:
    """``[B, n]`` ``tensor`` grown to ``[B, length]`` by ``fill``."""
    more = tensor.new_full((tensor.shape[0], length - tensor.shape[1]), fill)
    return torch.cat([tensor, more], dim=1)


def _in_place(previous, state):
    """``state`` in the tensors of ``previous`` (an earlier prefill's on the same cache) where they fit: a graph
    replay reads its inputs at fixed addresses, as HF's static buffers are; else in its own, marked so."""
    fields = _tensor_fields(state)
    if type(previous) is type(state) and [_form(getattr(previous, f)) for f in fields] == [
        _form(getattr(state, f)) for f in fields
    ]:
        for field in fields:
            getattr(previous, field).copy_(getattr(state, field))
        return dataclasses.replace(state, **{field: getattr(previous, field) for field in fields})
    for field in fields:
        torch._dynamo.mark_static_address(getattr(state, field))
    return state


def _tensor_fields(state) -> list[str]:
    return [field.name for field in dataclasses.fields(state) if isinstance(getattr(state, field.name), torch.Tensor)]


def _form(tensor: torch.Tensor) -> tuple:
    return tensor.shape, tensor.dtype, tensor.device


def synced(cache, lengths: list[int]) -> None:
    """After an eager step over ``cache``, its held ``lengths`` per layer: the state's counts follow them."""
    state = getattr(cache, STATE_ATTR, None)
    if isinstance(state, (StaticDecode, StaticCrossDecode)):
        state.follow(lengths)


def decode_step(state: StaticDecode, cache, inputs_embeds: torch.Tensor, position_ids, attention_mask) -> torch.Tensor:
    """One new position per sample over ``cache``'s whole buffers: the hidden states; the cache and the state's
    counts take the new position. ``position_ids`` in the graph's form; ``attention_mask`` the step's own."""
    layers = cache.layers
    buffers = layers[0].keys.shape[2]
    slots = torch.arange(buffers - 1, device=inputs_embeds.device)
    seen = _seen(state.prompt_valid, state.full_length, attention_mask)  # [B, M]: by position, the current included
    new = seen.index_select(1, state.full_length.view(1))  # the new position, the graph's last key
    shift = state.full_length - state.pruned_length  # a slot after the kept ones holds the position this further
    later = seen.gather(1, (slots + shift).clamp(max=buffers - 1).expand(seen.shape[0], -1))
    kept = torch.where(slots < state.kept_count, state.kept_valid[:, :-1], later & (slots < state.pruned_length))
    visible = torch.cat([seen[:, :-1] & (slots < state.full_length), new], 1), torch.cat([kept, new], 1)
    key_masks = [ops.key_mask_form(keys, state.key_mask_dtype) for keys in visible]
    past = [tensor[:, :, :-1] for layer in layers for tensor in (layer.keys, layer.values)]
    outputs = state.step(inputs_embeds, position_ids, *past, *key_masks)
    for layer_idx, layer in enumerate(layers):
        slot = (state.full_length if layer_idx < state.unpruned_layers else state.pruned_length).view(1)
        layer.keys.index_copy_(2, slot, outputs[1 + 2 * layer_idx][:, :, -1:])
        layer.values.index_copy_(2, slot, outputs[2 + 2 * layer_idx][:, :, -1:])
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):  # what HF's update counts
            layer.cumulative_length.add_(1)
    state.full_length.add_(1)
    state.pruned_length.add_(1)
    return outputs[0]


def cross_decode_step(
    state: StaticCrossDecode, cache, inputs_embeds: torch.Tensor, position_ids, attention_mask, cross_masks
) -> torch.Tensor:
    """One new position per sample over ``cache``'s whole buffers, for a trimmed cross-attention decoder: the hidden
    states; the self-attention layers and the state's count take the new position. ``cross_masks``: the step's
    cross-attention mask and text-row mask, as the decode graph takes them."""
    layers = cache.layers
    slots = torch.arange(state.prompt_valid.shape[1] - 1, device=inputs_embeds.device)
    seen = _seen(state.prompt_valid, state.full_length, attention_mask)
    new = seen.index_select(1, state.full_length.view(1))
    mask = torch.cat([seen[:, :-1] & (slots < state.full_length), new], 1).long()  # the graph's 2-D padding mask
    past = []
    for layer_idx, layer in enumerate(layers):
        held = {state.first_cross: state.features}.get(layer_idx)  # a later cross-attention layer: its whole buffer
        for tensor in (layer.keys, layer.values):
            past.append(tensor[:, :, :-1] if layer_idx in state.text_layers else tensor[:, :, :held])
    outputs = state.step(inputs_embeds, mask, position_ids, *cross_masks, *past, state.cache_index, state.cache_valid)
    slot = state.full_length.view(1)
    for layer_idx in state.text_layers:
        layer = layers[layer_idx]
        layer.keys.index_copy_(2, slot, outputs[1 + 2 * layer_idx][:, :, -1:])
        layer.values.index_copy_(2, slot, outputs[2 + 2 * layer_idx][:, :, -1:])
        if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
            layer.cumulative_length.add_(1)
    state.full_length.add_(1)
    return outputs[0]


def _seen(prompt_valid: torch.Tensor, full_length: torch.Tensor, attention_mask) -> torch.Tensor:
    """``[B, M]`` bool, by position: what the step's new position sees, read off the step's mask (HF's 4-D one over
    the buffers, or its dict holding one, or a 2-D one over the positions so far); without one, every real position
    of the prompt and every later one up to the new."""
    if isinstance(attention_mask, dict):
        attention_mask = attention_mask.get("full_attention")
    buffers = prompt_valid.shape[1]
    if attention_mask is None:
        positions = torch.arange(buffers, device=prompt_valid.device)
        return prompt_valid & (positions <= full_length)
    if attention_mask.dim() == 4:
        row = attention_mask[:, 0, -1]
        seen = row if row.dtype == torch.bool else row == 0
    else:
        seen = attention_mask.bool()
    if seen.shape[1] < buffers:
        seen = torch.cat([seen, seen.new_zeros(seen.shape[0], buffers - seen.shape[1])], dim=1)
    return seen[:, :buffers]
