"""The one-token decode step over HF's whole static buffers, for HF's compiled generate and ``torch.compile``.

Every shape is static (the step reads each layer's whole ``[B, H, M, D]`` buffer), nothing is read on the host, and
the state is an attribute of the cache object (set by the eager prefill), so Dynamo traces the step in one graph.
The step runs the key-mask decode graph (``capture.key_mask_decode``) on the first ``M - 1`` slots of every buffer
with the new position last; its key masks are computed in the step from tensors stored at the prefill: which slots
of the prompt are real (layers < k) or kept (layers >= k), and how many slots each group holds. The new keys and
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
    "that a FastV prefill filled; this {} was filled by {}: run the decode steps uncompiled (no compile_config)"
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


_TENSOR_FIELDS = ("prompt_valid", "kept_valid", "full_length", "pruned_length")


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


def decode_step(state: StaticDecode, cache, inputs_embeds: torch.Tensor, position_ids) -> torch.Tensor:
    """One new position per sample over ``cache``'s whole buffers: the hidden states; the cache and the state's
    counts take the new position. ``position_ids`` in the graph's form."""
    layers = cache.layers
    buffers = layers[0].keys.shape[2]
    slots = torch.arange(buffers - 1, device=inputs_embeds.device)
    seen = [
        torch.cat([valid[:, :-1] & (slots < held), valid[:, -1:]], dim=1)  # the last key: the new position
        for valid, held in ((state.prompt_valid, state.full_length), (state.kept_valid, state.pruned_length))
    ]
    key_masks = [ops.key_mask_form(visible, state.key_mask_dtype) for visible in seen]
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
