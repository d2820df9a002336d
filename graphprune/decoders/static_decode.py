"""The one-token decode step over HF's whole static buffers, for HF's compiled generate and ``torch.compile``.

Every shape is static (the step reads each layer's whole ``[B, H, M, D]`` buffer), nothing is read on the host, and
the state is an attribute of the cache object (set by the eager prefill), so Dynamo traces the step in one graph.
The step runs the key-mask decode graph (``capture.key_mask_decode``) on the first ``M - 1`` slots of every buffer
with the new position last; its key masks are computed in the step from the step's mask (by position: layers < k
hold position p in slot p) and tensors stored at the prefill: the kept slots' validity (layers >= k hold the kept
positions first, then the later ones in order) and how many slots each group holds. The new keys and
values are then written in place at that count (the kept slots are left-padded to the batch's most kept, so every
row of a group writes the same slot).
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
    "that a FastV or DART prefill filled; this {} was filled by {}: run the decode steps uncompiled (no compile_config)"
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
        setattr(cache, STATE_ATTR, NOT_STATIC.format(type(cache).__name__, method))
        return
    batch, device = mask.shape[0], mask.device

    def grown(valid: torch.Tensor) -> torch.Tensor:
        return torch.cat([valid.bool(), valid.new_ones(batch, buffers - valid.shape[1], dtype=torch.bool)], dim=1)

    def length(n: int) -> torch.Tensor:
        return torch.tensor(n, dtype=torch.long, device=device)

    state = StaticDecode(
        step,
        method.k,
        key_mask_dtype,
        grown(mask),
        grown(kept_valid),
        length(mask.shape[1]),
        length(kept_valid.shape[1]),
        length(kept_valid.shape[1]),
    )
    setattr(cache, STATE_ATTR, _in_place(getattr(cache, TENSORS_ATTR, None), state))
    setattr(cache, TENSORS_ATTR, getattr(cache, STATE_ATTR))


def _in_place(previous: StaticDecode | None, state: StaticDecode) -> StaticDecode:
    """``state`` in the tensors of ``previous`` (an earlier prefill's on the same cache) where they fit: a graph
    replay reads its inputs at fixed addresses, as HF's static buffers are; else in its own, marked so."""
    tensors = _tensors(state)
    if previous is not None and [_form(t) for t in _tensors(previous)] == [_form(t) for t in tensors]:
        for old, new in zip(_tensors(previous), tensors, strict=True):
            old.copy_(new)
        return dataclasses.replace(state, **{field: getattr(previous, field) for field in _TENSOR_FIELDS})
    for tensor in tensors:
        torch._dynamo.mark_static_address(tensor)
    return state


_TENSOR_FIELDS = ("prompt_valid", "kept_valid", "full_length", "pruned_length", "kept_count")


def _tensors(state: StaticDecode) -> list[torch.Tensor]:
    return [getattr(state, field) for field in _TENSOR_FIELDS]


def _form(tensor: torch.Tensor) -> tuple:
    return tensor.shape, tensor.dtype, tensor.device


def synced(cache, lengths: list[int]) -> None:
    """After an eager step over ``cache``, its held ``lengths`` per layer: the state's counts follow them."""
    state = getattr(cache, STATE_ATTR, None)
    if isinstance(state, StaticDecode):
        state.full_length.fill_(lengths[0])
        state.pruned_length.fill_(lengths[-1])


def decode_step(state: StaticDecode, cache, inputs_embeds: torch.Tensor, position_ids, attention_mask) -> torch.Tensor:
    """One new position per sample over ``cache``'s whole buffers: the hidden states; the cache and the state's
    counts take the new position. ``position_ids`` in the graph's form; ``attention_mask`` the step's own."""
    layers = cache.layers
    buffers = layers[0].keys.shape[2]
    slots = torch.arange(buffers - 1, device=inputs_embeds.device)
    seen = _seen(state, attention_mask, buffers)  # [B, M]: by position, the current one included
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


def _seen(state: StaticDecode, attention_mask, buffers: int) -> torch.Tensor:
    """``[B, M]`` bool, by position: what the step's new position sees, read off the step's mask (HF's 4-D one over
    the buffers, or its dict holding one, or a 2-D one over the positions so far); without one, every real position
    of the prompt and every later one up to the new."""
    if isinstance(attention_mask, dict):
        attention_mask = attention_mask.get("full_attention")
    if attention_mask is None:
        positions = torch.arange(buffers, device=state.prompt_valid.device)
        return state.prompt_valid & (positions <= state.full_length)
    if attention_mask.dim() == 4:
        row = attention_mask[:, 0, -1]
        seen = row if row.dtype == torch.bool else row == 0
    else:
        seen = attention_mask.bool()
    if seen.shape[1] < buffers:
        seen = torch.cat([seen, seen.new_zeros(seen.shape[0], buffers - seen.shape[1])], dim=1)
    return seen[:, :buffers]
