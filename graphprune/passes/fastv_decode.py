"""FastV's decode step (arXiv 2403.06764, generation): layers ``>= k`` attend over their pruned cache.

The captured decode graph builds one ``[B, 1, T, P + T]`` mask for every layer. Layers ``>= k`` hold
only ``P'`` cached positions, so the pass gives them that mask gathered on the key axis
(``ops.gather_decode_mask``) and re-points the past and key lengths they read to ``P'`` and ``P' + T``.
``torch.export`` may read the (then shared) past length off any layer's cache input; those reads
are first moved to layer 0's, which is never pruned.

New inputs: ``graphprune_cache_index [B, P']`` (the original position of each pruned-cache slot)
and ``graphprune_cache_valid [B, P']`` (False for padding slots).
"""

from __future__ import annotations

import torch
from torch import fx

from .. import ops
from ..methods import FastV
from ._graph import (
    add_placeholder,
    crossing_nodes,
    fail,
    finish,
    first_node_of_layer,
    layout_of,
    move_size_reads,
    named,
    placeholder,
    repoint,
    symbol,
)

PASS = "fastv_decode"


def fastv_decode(gm: fx.GraphModule, method: FastV) -> fx.GraphModule:
    """Give the decode graph's layers ``>= k`` a mask and key length that fit their pruned cache."""
    layout = layout_of(gm, PASS)
    method.check_layers(layout.num_layers)
    boundary = first_node_of_layer(gm, layout, method.k)
    past = symbol(placeholder(gm, "past_0").meta["val"].shape[2])
    new_tokens = symbol(placeholder(gm, "inputs_embeds").meta["val"].shape[1])
    pruned_pasts = {f"past_{i}" for i in range(2 * method.k, 2 * layout.num_layers)}
    move_size_reads(gm, past, pruned_pasts, placeholder(gm, "past_0"))  # layer 0 is never pruned
    crossing = crossing_nodes(gm, boundary)

    cache_index = add_placeholder(gm, "graphprune_cache_index")
    cache_valid = add_placeholder(gm, "graphprune_cache_valid")
    graph = gm.graph
    masks, lengths = [], []
    with graph.inserting_before(boundary):
        for node, users in crossing.items():
            value = node.meta.get("val")
            if node.op == "placeholder":
                continue  # the pruned layers' own past, which the runtime passes at its pruned length
            if isinstance(value, torch.SymInt) and past in symbol(value).free_symbols:
                lengths.append((node, users, symbol(value)))
            elif isinstance(value, torch.Tensor) and any(past in _free(size) for size in value.shape):
                if value.dim() != 4 or symbol(value.shape[3]) != past + new_tokens:
                    raise fail(
                        gm, PASS, f"{node.name} {tuple(value.shape)} has a past axis but is no [B, h, T, P + T] mask"
                    )
                pruned = named(
                    graph.call_function(ops.gather_decode_mask, (node, cache_index, cache_valid)), f"gather_{node.name}"
                )
                repoint(node, pruned, users)
                masks.append(pruned)
        if len(masks) != 1:
            raise fail(gm, PASS, f"expected one attention mask read by layers >= {method.k}, found {len(masks)}")
        pruned_lengths = {
            past: named(graph.call_function(torch.ops.aten.sym_size.int, (cache_index, 1)), "past_length"),
            past + new_tokens: named(graph.call_function(torch.ops.aten.sym_size.int, (masks[0], 3)), "key_length"),
        }
        for node, users, expr in lengths:
            if expr not in pruned_lengths:
                raise fail(gm, PASS, f"{node.name} = {expr} depends on the past length in a way the pass can't map")
            repoint(node, pruned_lengths[expr], users)
    return finish(gm, PASS, f"k={method.k}; layers >= {method.k} attend over their pruned cache")


def _free(size) -> set:
    expr = symbol(size)
    return expr.free_symbols if expr is not None else set()
