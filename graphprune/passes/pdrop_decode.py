"""PyramidDrop's decode step (arXiv 2410.17247, generation): each stage's layers attend over their own cache.

After a PDrop prefill, layers ``l_s .. l_{s+1} - 1`` hold only stage ``s``'s ``P_s`` kept positions (and the ones
decoded since), so the cache has one length per stage. The captured decode graph builds one ``[B, 1, T, P + T]``
mask for every layer; the pass gives each stage's layers that mask gathered on the key axis with the stage's slots
(``ops.gather_decode_mask``) and re-points the past and key lengths they read to ``P_s`` and ``P_s + T``, as
``fastv_decode`` does for one group. Reads of the past length off a pruned layer's cache move to layer 0's.

New inputs, per stage ``s`` in order: ``graphprune_cache_index_{s} [B, P_s]`` (the original position of each slot)
and ``graphprune_cache_valid_{s} [B, P_s]`` (False for padding slots). New positions keep the position ids the
unmodified model gives them (the runtime passes them).
"""

from __future__ import annotations

import torch
from torch import fx

from .. import ops
from ..methods import PDrop
from . import _graph

PASS = "pdrop_decode"


def pdrop_decode(gm: fx.GraphModule, method: PDrop) -> fx.GraphModule:
    """Give each stage's layers of a decode graph a mask and key lengths that fit their own pruned cache."""
    layout = _graph.layout_of(gm, PASS)
    method.check_layers(layout.num_layers)
    if not any(node.op == "placeholder" and node.name == "attention_mask" for node in gm.graph.nodes):
        raise _graph.fail(gm, PASS, "the decode graph takes no attention_mask (PDrop needs the general form)")
    past = _graph.symbol(_graph.placeholder(gm, "past_0").meta["val"].shape[2])
    new_tokens = _graph.symbol(_graph.placeholder(gm, "inputs_embeds").meta["val"].shape[1])
    pruned_pasts = {f"past_{i}" for i in range(2 * method.layers[0], 2 * layout.num_layers)}
    _graph.move_size_reads(gm, past, pruned_pasts, _graph.placeholder(gm, "past_0"))  # layer 0 is never pruned
    boundaries = [_graph.first_node_of_layer(gm, layout, layer) for layer in method.layers]
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    starts = [order[boundary] for boundary in boundaries]
    ends = [*starts[1:], len(order)]
    crossing = _graph.crossing_nodes(gm, boundaries[0])
    for boundary in boundaries[1:]:  # only nodes from before l_1 may carry past lengths into later stages
        late = [node for node in _graph.crossing_nodes(gm, boundary) if order[node] >= starts[0]]
        if any(_graph.depends_on(node.meta.get("val"), past) for node in late):
            raise _graph.fail(gm, PASS, f"a node inside the pruned layers carries the past length into {boundary}")
    graph = gm.graph
    for stage, (boundary, start, end) in enumerate(zip(boundaries, starts, ends, strict=True)):
        cache_index = _graph.add_placeholder(gm, f"graphprune_cache_index_{stage}")
        cache_valid = _graph.add_placeholder(gm, f"graphprune_cache_valid_{stage}")
        masks, lengths = [], []
        with graph.inserting_before(boundary):
            for node, users in crossing.items():
                users = [user for user in users if start <= order[user] < end]
                value = node.meta.get("val")
                if not users or node.op == "placeholder":
                    continue  # the stage's own past, which the runtime passes at its pruned length
                if isinstance(value, torch.SymInt) and _graph.depends_on(value, past):
                    lengths.append((node, users, _graph.symbol(value)))
                elif _graph.dependent_axes(value, past):
                    if value.dim() != 4 or _graph.symbol(value.shape[3]) != past + new_tokens:
                        raise _graph.fail(
                            gm,
                            PASS,
                            f"{node.name} {tuple(value.shape)} has a past axis but is no [B, h, T, P + T] mask",
                        )
                    pruned = _graph.named(
                        graph.call_function(ops.gather_decode_mask, (node, cache_index, cache_valid)),
                        f"gather_{node.name}_{stage}",
                    )
                    _graph.repoint(node, pruned, users)
                    masks.append(pruned)
            if not masks:
                raise _graph.fail(
                    gm, PASS, f"expected an attention mask read by layer {method.layers[stage]}, found none"
                )
            pruned_lengths = {
                past: _graph.size_of(gm, cache_index, 1, f"past_length_{stage}"),
                past + new_tokens: _graph.size_of(gm, masks[0], 3, f"key_length_{stage}"),
            }
            for node, users, expr in lengths:
                if expr not in pruned_lengths:
                    raise _graph.fail(
                        gm, PASS, f"{node.name} = {expr} depends on the past length in a way the pass can't map"
                    )
                _graph.repoint(node, pruned_lengths[expr], users)
    stages = ", ".join(str(layer) for layer in method.layers)
    return _graph.finish(gm, PASS, f"layers={stages}; each stage's layers attend over their own pruned cache")
