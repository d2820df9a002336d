"""FastV's decode step (arXiv 2403.06764, generation): layers ``>= k`` attend over their pruned cache.

The captured decode graph builds one ``[B, 1, T, P + T]`` mask for every layer (Gemma 3: one per layer kind).
Layers ``>= k`` hold only ``P'`` cached positions, so the pass gives them each mask gathered on the key axis
(``ops.gather_decode_mask``) and re-points the past and key lengths they read to ``P'`` and ``P' + T``.
``torch.export`` may read the (then shared) past length off any layer's cache input; those reads
are first moved to layer 0's, which is never pruned.

New inputs: ``graphprune_cache_index [B, P']`` (the original position of each pruned-cache slot)
and ``graphprune_cache_valid [B, P']`` (False for padding slots). This general form (any step, any mask the
caller passes; the one ONNX export writes) gathers the mask at every step.

The graph's two one-token forms gather nothing per step; their pruned layers read their key length off their
own past. ``capture.unmasked_decode``'s (no padding) has no mask at all. ``capture.key_mask_decode``'s takes
the key mask of layers ``< k`` as ``graphprune_key_mask [B, P + 1]``, and the pass adds the pruned layers'
``graphprune_pruned_key_mask [B, P' + 1]``: the runtime builds both at the first step of a ``generate``
(whose mask only grows by ones) and passes views of them, so a step does no mask work that the prompt sizes.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from .. import ops
from ..layout import KEY_MASK
from ..methods import FastV
from . import _graph

PASS = "fastv_decode"


def fastv_decode(gm: fx.GraphModule, method: FastV) -> fx.GraphModule:
    """Give the decode graph's layers ``>= k`` a mask and key length that fit their pruned cache."""
    layout = _graph.layout_of(gm, PASS)
    method.check_layers(layout.num_layers)
    boundary = _graph.first_node_of_layer(gm, layout, method.k)
    past = _graph.symbol(_graph.placeholder(gm, "past_0").meta["val"].shape[2])
    new_tokens = _graph.symbol(_graph.placeholder(gm, "inputs_embeds").meta["val"].shape[1])
    pruned_pasts = {f"past_{i}" for i in range(2 * method.k, 2 * layout.num_layers)}
    _graph.move_size_reads(gm, past, pruned_pasts, _graph.placeholder(gm, "past_0"))  # layer 0 is never pruned
    crossing = _graph.crossing_nodes(gm, boundary)
    if not any(node.op == "placeholder" and node.name == "attention_mask" for node in gm.graph.nodes):
        return _unmasked(gm, method, boundary, crossing, past, new_tokens)

    cache_index = _graph.add_placeholder(gm, "graphprune_cache_index")
    cache_valid = _graph.add_placeholder(gm, "graphprune_cache_valid")
    graph = gm.graph
    masks, lengths = [], []
    with graph.inserting_before(boundary):
        for node, users in crossing.items():
            value = node.meta.get("val")
            if node.op == "placeholder":
                continue  # the pruned layers' own past, which the runtime passes at its pruned length
            if isinstance(value, torch.SymInt) and _graph.depends_on(value, past):
                lengths.append((node, users, _graph.symbol(value)))
            elif _graph.dependent_axes(value, past):
                if value.dim() != 4 or _graph.symbol(value.shape[3]) != past + new_tokens:
                    raise _graph.fail(
                        gm, PASS, f"{node.name} {tuple(value.shape)} has a past axis but is no [B, h, T, P + T] mask"
                    )
                pruned = _graph.named(
                    graph.call_function(ops.gather_decode_mask, (node, cache_index, cache_valid)), f"gather_{node.name}"
                )
                _graph.repoint(node, pruned, users)
                masks.append(pruned)
        if not masks:
            raise _graph.fail(gm, PASS, f"expected an attention mask read by layers >= {method.k}, found none")
        pruned_lengths = {
            past: _graph.size_of(gm, cache_index, 1, "past_length"),
            past + new_tokens: _graph.size_of(gm, masks[0], 3, "key_length"),
        }
        for node, users, expr in lengths:
            if expr not in pruned_lengths:
                raise _graph.fail(
                    gm, PASS, f"{node.name} = {expr} depends on the past length in a way the pass can't map"
                )
            _graph.repoint(node, pruned_lengths[expr], users)
    return _graph.finish(gm, PASS, f"k={method.k}; layers >= {method.k} attend over their pruned cache")


def _unmasked(gm: fx.GraphModule, method: FastV, boundary, crossing, past, new_tokens) -> fx.GraphModule:
    """The pass on a decode graph without ``attention_mask``: the past and key lengths that layers ``>= k`` read
    become those of their own (pruned) past; with a key mask input, they read the one of their slots instead."""
    graph = gm.graph
    keyed = any(node.op == "placeholder" and node.name == KEY_MASK for node in graph.nodes)
    pruned_mask = _graph.add_placeholder(gm, "graphprune_pruned_key_mask") if keyed else None
    with graph.inserting_before(boundary):
        pruned_past = _graph.size_of(gm, _graph.placeholder(gm, f"past_{2 * method.k}"), 2, "past_length")
        step = _graph.size_of(gm, _graph.placeholder(gm, "inputs_embeds"), 1, "new_tokens")
        key_length = _graph.named(graph.call_function(operator.add, (pruned_past, step)), "key_length")
        pruned_lengths = {past: pruned_past, past + new_tokens: key_length}
        pruned_rows = None
        if keyed:
            pruned_rows = _graph.named(graph.call_function(ops.key_mask_rows, (pruned_mask,)), "pruned_key_mask_rows")
        for node, users in crossing.items():
            value = node.meta.get("val")
            if node.op == "placeholder" or not _graph.depends_on(value, past):
                continue
            if keyed and node.target is ops.key_mask_rows:
                _graph.repoint(node, pruned_rows, users)
                continue
            expr = _graph.symbol(value)
            if expr not in pruned_lengths:
                raise _graph.fail(gm, PASS, f"{node.name} {value} depends on the past length; no mask to gather")
            _graph.repoint(node, pruned_lengths[expr], users)
    form = "their slots' key mask" if keyed else "no mask"
    return _graph.finish(gm, PASS, f"k={method.k}; layers >= {method.k} attend over their pruned cache, {form}")
