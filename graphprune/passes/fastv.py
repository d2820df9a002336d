"""FastV (arXiv 2403.06764) as a rewrite of a captured prefill graph.

After layer ``k - 1`` it inserts ranking nodes that use that layer's own query and key (after
RoPE; the model's attention kernel is untouched), a per-sample top-k, and gather nodes for every
tensor with a sequence axis that layers ``>= k`` read: the residual stream, RoPE cos/sin, the 4-D
attention mask and the sequence-length ``sym_size``. Everything inserted is named ``graphprune_*``.

New inputs: ``graphprune_visual_mask [B, N]`` (bool) and ``graphprune_slots [S]`` (``arange(S)``,
S = the pruned length of the longest sample). New outputs, after the cache: ``graphprune_keep_index``
and ``graphprune_slot_valid`` (``[B, S]``, see ``ops.fastv_select``) and ``graphprune_scores [B, N]``.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from .. import ops
from ..methods import FastV
from ._graph import (
    add_placeholder,
    append_outputs,
    crossing_nodes,
    fail,
    finish,
    first_node_of_layer,
    layout_of,
    module_path,
    named,
    output_node,
    placeholder,
    repoint,
    symbol,
)

PASS = "fastv"


def attention_query(gm: fx.GraphModule, scope: str, query_proj: str, key_proj: str) -> fx.Node:
    """The query that meets the key inside attention module ``scope``: after RoPE, before the kernel.

    Found by data flow, for any attention kernel: the first node in the scope that depends on both
    projections is where q and k meet (SDPA, or the eager ``q @ k^T``); its argument that depends
    on the query projection only is the query.
    """
    from_query, from_key = set(), set()
    for node in gm.graph.nodes:
        path = module_path(node)
        if path != scope and not path.startswith(scope + "."):
            continue
        inputs = node.all_input_nodes
        q = path == f"{scope}.{query_proj}" or any(arg in from_query for arg in inputs)
        k = path == f"{scope}.{key_proj}" or any(arg in from_key for arg in inputs)
        if q and k:
            return next(arg for arg in inputs if arg in from_query and arg not in from_key)
        if q:
            from_query.add(node)
        if k:
            from_key.add(node)
    raise fail(gm, PASS, f"no node in {scope} combines {query_proj} and {key_proj}: is it an attention module?")


def fastv(gm: fx.GraphModule, method: FastV) -> fx.GraphModule:
    """Insert FastV ranking after layer ``k - 1`` and pruning before layer ``k`` into a prefill graph."""
    layout = layout_of(gm, PASS)
    method.check_layers(layout.num_layers)
    k = method.k
    boundary = first_node_of_layer(gm, layout, k)
    query_states = attention_query(
        gm, f"{layout.layers}.{k - 1}.{layout.attention}", layout.query_proj, layout.key_proj
    )
    key_states = output_node(gm).args[0][1 + 2 * (k - 1)]
    seq = symbol(placeholder(gm, "inputs_embeds").meta["val"].shape[1])
    crossing = crossing_nodes(gm, boundary)

    visual_mask = add_placeholder(gm, "graphprune_visual_mask")
    slots = add_placeholder(gm, "graphprune_slots")
    attention_mask = placeholder(gm, "attention_mask")
    graph = gm.graph
    with graph.inserting_before(boundary):
        scores = named(
            graph.call_function(
                ops.fastv_scores, (query_states, key_states, attention_mask, layout.scaling, method.query)
            ),
            "scores",
        )
        selection = named(
            graph.call_function(ops.fastv_select, (scores, visual_mask, attention_mask, slots, method.keep)), "select"
        )
        index = named(graph.call_function(operator.getitem, (selection, 0)), "keep_index")
        valid = named(graph.call_function(operator.getitem, (selection, 1)), "slot_valid")
        pruned_length = named(graph.call_function(torch.ops.aten.sym_size.int, (index, 1)), "pruned_length")
        gathered = []
        for node, users in crossing.items():
            replacement = _pruned(gm, node, seq, index, valid, pruned_length)
            if replacement is not None:
                repoint(node, replacement, users)
                gathered.append(node.name)
    append_outputs(gm, [index, valid, scores])
    return finish(gm, PASS, f"k={k} keep={method.keep} query={method.query}; gathered for layers >= {k}: {gathered}")


def _pruned(gm, node, seq, index, valid, pruned_length) -> fx.Node | None:
    """The pruned stand-in for a node that layers >= k read, or None if it has no sequence axis."""
    value = node.meta.get("val")
    graph = gm.graph
    if isinstance(value, torch.SymInt):
        expr = symbol(value)
        if expr == seq:
            return pruned_length
        if seq in expr.free_symbols:
            raise fail(gm, PASS, f"{node.name} = {expr} depends on the sequence length in a way the pass can't map")
        return None
    if not isinstance(value, torch.Tensor):
        return None
    axes = [
        dim for dim, size in enumerate(value.shape) if symbol(size) is not None and seq in symbol(size).free_symbols
    ]
    if not axes:
        return None
    if any(symbol(value.shape[dim]) != seq for dim in axes):
        raise fail(gm, PASS, f"{node.name} has shape {tuple(value.shape)}: a sequence axis not equal to the length")
    if axes == [1]:
        return named(graph.call_function(ops.gather_sequence, (node, index, 1)), f"gather_{node.name}")
    if value.dim() == 4 and axes == [2, 3]:
        return named(graph.call_function(ops.gather_attention_mask, (node, index, valid)), f"gather_{node.name}")
    raise fail(gm, PASS, f"{node.name} has shape {tuple(value.shape)}; the pass gathers [B, N, ...] and [B, h, N, N]")
