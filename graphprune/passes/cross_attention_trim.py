"""Trimmed Llama (arXiv 2504.00557) as a rewrite of a captured cross-attention decoder's prefill graph.

After the first cross-attention layer L0 it inserts ranking nodes that use L0's own query and key
(after its q/k norms; the attention kernel is untouched) over the valid text rows, a per-sample
selection (``head_union`` or ``topk``), and gather nodes for what every later cross-attention layer
reads with a feature axis: ``cross_attention_states`` before its ``k_proj``/``v_proj``, its
cross-attention mask, and the feature-count ``sym_size``. L0 keeps every feature. Everything
inserted is named ``graphprune_*``.

New input (``select="topk"`` only): ``graphprune_slots [K']`` (``arange(K')``, K' = the largest kept
count in the batch). New outputs, after the cache: ``graphprune_keep_index`` and
``graphprune_slot_valid`` (``[B, K']``, see ``ops.cross_attention_select``) and
``graphprune_scores [B, H, F]``.
"""

from __future__ import annotations

import sympy
from torch import fx

from .. import ops
from ..methods import CrossAttentionTrim
from . import _graph

PASS = "cross_attention_trim"


def cross_attention_trim(gm: fx.GraphModule, method: CrossAttentionTrim) -> fx.GraphModule:
    """Rank the features at the first cross-attention layer; later ones see only the kept features."""
    layout = _graph.layout_of(gm, PASS)
    method.check_cross_attention_layers(layout.cross_attention_layers)
    first, *later = layout.cross_attention_layers
    query_states = _graph.attention_query(
        gm, PASS, f"{layout.layers}.{first}.{layout.cross_attention}", layout.query_proj, layout.key_proj
    )
    key_states = _graph.output_node(gm).args[0][1 + 2 * first]
    features = _graph.symbol(_graph.placeholder(gm, "cross_attention_states").meta["val"].shape[1])
    boundary = _graph.first_node_of_layer(gm, layout, first + 1)
    slots = _graph.add_placeholder(gm, "graphprune_slots") if method.select == "topk" else None
    masks = [_graph.placeholder(gm, name) for name in ("cross_attention_mask", "full_text_row_masked_out_mask")]
    attention_mask = _graph.placeholder(gm, "attention_mask")
    graph = gm.graph
    with graph.inserting_before(boundary):
        scores = _graph.named(
            graph.call_function(
                ops.cross_attention_scores, (query_states, key_states, *masks, attention_mask, layout.scaling)
            ),
            "scores",
        )
        valid_features = _graph.named(
            graph.call_function(ops.valid_features, (*masks, attention_mask)), "valid_features"
        )
        index, valid = _graph.insert_selection(
            gm, ops.cross_attention_select, (scores, valid_features, method.keep, method.select, slots)
        )
        gathered = trim_feature_inputs(gm, PASS, later, features, index, valid)
    _graph.append_outputs(gm, [index, valid, scores])
    return _graph.finish(
        gm, PASS, f"keep={method.keep} select={method.select}; ranked at layer {first}, trimmed {later}: {gathered}"
    )


def trim_feature_inputs(
    gm: fx.GraphModule, pass_name: str, layers: list[int], features: sympy.Symbol, index: fx.Node, valid: fx.Node
) -> list[str]:
    """Re-point what ``layers`` read with a feature axis to its kept-slot version (inserted at the
    current insertion point); returns the names of the nodes trimmed.

    ``[B, F, d]`` features are gathered on axis 1, ``[B, 1, T, F]`` masks on axis 3 with padding
    slots hidden, a ``sym_size`` equal to F becomes the slot count. Past keys/values (decode) are
    left alone: the runtime passes them at their trimmed length.
    """
    layout = _graph.layout_of(gm, pass_name)
    length = _graph.size_of(gm, index, 1, "pruned_length")
    gathers = {
        (3, (1,)): (ops.gather_sequence, (index, 1)),  # [B, F, d] features
        (4, (3,)): (ops.gather_cross_attention_mask, (index, valid)),  # [B, 1, T, F] masks
    }
    pruned: dict[fx.Node, fx.Node | None] = {}
    for node in list(gm.graph.nodes):
        if _graph.layer_index(node, layout) not in layers:
            continue
        for source in node.all_input_nodes:
            own_layer = _graph.layer_index(source, layout) == _graph.layer_index(node, layout)
            if own_layer or source.name.startswith("past_"):
                continue
            if source not in pruned:
                pruned[source] = _graph.stand_in(gm, pass_name, source, features, length, gathers)
            if pruned[source] is not None:
                _graph.repoint(source, pruned[source], [node])
    return sorted(source.name for source, stand in pruned.items() if stand is not None)
