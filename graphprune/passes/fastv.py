"""FastV (arXiv 2403.06764) as a rewrite of a captured prefill graph.

After layer ``k - 1`` it inserts ranking nodes that use that layer's own query and key (after
RoPE; the model's attention kernel is untouched) and, for a decoder with per-layer masks (Gemma 3), its
mask, a per-sample top-k (the last real position always kept, so it is the last slot: its logits are the
last), and gather nodes for every
tensor with a sequence axis that layers ``>= k`` read: the residual stream, RoPE cos/sin, the 4-D
attention mask, the DeepStack inputs of layers ``>= k`` (Qwen3-VL) and the sequence-length ``sym_size``
(and counts that are multiples of it, e.g. a mixture-of-experts layer's flattened token count).
Everything inserted is named ``graphprune_*``.

New inputs: ``graphprune_visual_mask [B, N]`` (bool) and ``graphprune_slots [S]`` (``arange(S)``,
S = the pruned length of the longest sample). New outputs, after the cache: ``graphprune_keep_index``
and ``graphprune_slot_valid`` (``[B, S]``, see ``ops.fastv_select``) and ``graphprune_scores [B, N]``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import fx

from .. import ops
from ..methods import FastV
from . import _graph

PASS = "fastv"


def fastv(gm: fx.GraphModule, method: FastV) -> fx.GraphModule:
    """Insert FastV ranking after layer ``k - 1`` and pruning before layer ``k`` into a prefill graph."""
    layout = _graph.layout_of(gm, PASS)
    method.check_layers(layout.num_layers)
    k = method.k
    query_states = _graph.attention_query(
        gm, PASS, f"{layout.layers}.{k - 1}.{layout.attention}", layout.query_proj, layout.key_proj
    )
    key_states = _graph.output_node(gm).args[0][1 + 2 * (k - 1)]
    seq = _graph.symbol(_graph.placeholder(gm, "inputs_embeds").meta["val"].shape[1])
    # the decoder's own per-layer masks (Gemma 3: sliding window, image blocks): rank with layer k - 1's
    layer_mask = _graph.layer_mask(gm, PASS, layout, k - 1, seq) if layout.layer_masks else None

    def scores(visual_mask: fx.Node, attention_mask: fx.Node) -> fx.Node:
        args = (query_states, key_states, attention_mask, layout.scaling, method.query, layer_mask)
        return gm.graph.call_function(ops.fastv_scores, args)

    gathered = insert_pruning(gm, PASS, method, scores)
    return _graph.finish(
        gm, PASS, f"k={k} keep={method.keep} query={method.query}; gathered for layers >= {k}: {gathered}"
    )


def insert_pruning(gm: fx.GraphModule, pass_name: str, method, scores: Callable) -> list[str]:
    """Before layer ``method.k``: ``graphprune_scores = scores(visual_mask, attention_mask)`` (a node it inserts),
    FastV's selection of ``ceil(method.keep * n_visual)`` visual positions by those scores, and the gathers of every
    node that layers ``>= k`` read along the sequence; adds the inputs and outputs the module docstring names.
    Returns the names of the gathered nodes (the caller finishes the rewrite)."""
    layout = _graph.layout_of(gm, pass_name)
    boundary = _graph.first_node_of_layer(gm, layout, method.k)
    seq = _graph.symbol(_graph.placeholder(gm, "inputs_embeds").meta["val"].shape[1])
    crossing = _graph.crossing_nodes(gm, boundary)

    visual_mask = _graph.add_placeholder(gm, "graphprune_visual_mask")
    slots = _graph.add_placeholder(gm, "graphprune_slots")
    attention_mask = _graph.placeholder(gm, "attention_mask")
    graph = gm.graph
    with graph.inserting_before(boundary):
        ranking = _graph.named(scores(visual_mask, attention_mask), "scores")
        index, valid = _graph.insert_selection(
            gm, ops.fastv_select, (ranking, visual_mask, attention_mask, slots, method.keep)
        )
        pruned_length = _graph.size_of(gm, index, 1, "pruned_length")
        gathers = {
            (None, (1,)): (ops.gather_sequence, (index, 1)),  # [B, N, ...]: residual stream, RoPE cos/sin
            (4, (2, 3)): (ops.gather_attention_mask, (index, valid)),  # [B, h, N, N] masks
        }
        gathered = []
        for node, users in crossing.items():
            replacement = _graph.stand_in(gm, pass_name, node, seq, pruned_length, gathers)
            if replacement is not None:
                _graph.repoint(node, replacement, users)
                gathered.append(node.name)
    _graph.append_outputs(gm, [index, valid, ranking])
    return gathered
