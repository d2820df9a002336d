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

import operator

import sympy
import torch
from torch import fx

from .. import ops
from ..methods import CrossAttentionTrim
from ._graph import (
    add_placeholder,
    append_outputs,
    fail,
    finish,
    first_node_of_layer,
    layer_index,
    layout_of,
    named,
    output_node,
    placeholder,
    repoint,
    symbol,
)
from .fastv import attention_query

PASS = "cross_attention_trim"


def cross_attention_trim(gm: fx.GraphModule, method: CrossAttentionTrim) -> fx.GraphModule:
    """Rank the features at the first cross-attention layer; later ones see only the kept features."""
    layout = layout_of(gm, PASS)
    method.check_cross_attention_layers(layout.cross_attention_layers)
    first, *later = layout.cross_attention_layers
    query_states = attention_query(
        gm, f"{layout.layers}.{first}.{layout.cross_attention}", layout.query_proj, layout.key_proj
    )
    key_states = output_node(gm).args[0][1 + 2 * first]
    features = symbol(placeholder(gm, "cross_attention_states").meta["val"].shape[1])
    boundary = first_node_of_layer(gm, layout, first + 1)
    slots = add_placeholder(gm, "graphprune_slots") if method.select == "topk" else None
    masks = [placeholder(gm, name) for name in ("cross_attention_mask", "full_text_row_masked_out_mask")]
    attention_mask = placeholder(gm, "attention_mask")
    graph = gm.graph
    with graph.inserting_before(boundary):
        scores = named(
            graph.call_function(
                ops.cross_attention_scores, (query_states, key_states, *masks, attention_mask, layout.scaling)
            ),
            "scores",
        )
        valid_features = named(graph.call_function(ops.valid_features, (*masks, attention_mask)), "valid_features")
        selection = named(
            graph.call_function(
                ops.cross_attention_select, (scores, valid_features, method.keep, method.select, slots)
            ),
            "select",
        )
        index = named(graph.call_function(operator.getitem, (selection, 0)), "keep_index")
        valid = named(graph.call_function(operator.getitem, (selection, 1)), "slot_valid")
        gathered = trim_feature_inputs(gm, PASS, later, features, index, valid)
    append_outputs(gm, [index, valid, scores])
    return finish(
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
    layout = layout_of(gm, pass_name)
    graph = gm.graph
    pruned: dict[fx.Node, fx.Node] = {}
    pruned_length = None
    for node in list(graph.nodes):
        if layer_index(node, layout) not in layers:
            continue
        for source in node.all_input_nodes:
            if layer_index(source, layout) == layer_index(node, layout) or source.name.startswith("past_"):
                continue
            if source not in pruned:
                value = source.meta.get("val")
                if isinstance(value, torch.SymInt) and symbol(value) == features:
                    if pruned_length is None:
                        pruned_length = named(
                            graph.call_function(torch.ops.aten.sym_size.int, (index, 1)), "pruned_length"
                        )
                    pruned[source] = pruned_length
                elif _depends_on(value, features):
                    pruned[source] = _gathered(gm, pass_name, source, features, index, valid)
                else:
                    continue
            repoint(source, pruned[source], [node])
    return sorted(source.name for source in pruned)


def _depends_on(value, features: sympy.Symbol) -> bool:
    if isinstance(value, torch.SymInt):
        return features in symbol(value).free_symbols
    if isinstance(value, torch.Tensor):
        return any(symbol(size) is not None and features in symbol(size).free_symbols for size in value.shape)
    return False


def _gathered(gm: fx.GraphModule, pass_name: str, node: fx.Node, features, index: fx.Node, valid: fx.Node) -> fx.Node:
    value = node.meta["val"]
    if isinstance(value, torch.SymInt):
        raise fail(gm, pass_name, f"{node.name} = {symbol(value)} depends on the feature count in an unmapped way")
    shape = value.shape
    axes = [dim for dim, size in enumerate(shape) if symbol(size) is not None and features in symbol(size).free_symbols]
    if any(symbol(shape[dim]) != features for dim in axes):
        raise fail(gm, pass_name, f"{node.name} {tuple(shape)} has an axis derived from the feature count")
    if len(shape) == 3 and axes == [1]:
        return named(gm.graph.call_function(ops.gather_sequence, (node, index, 1)), f"gather_{node.name}")
    if len(shape) == 4 and axes == [3]:
        return named(
            gm.graph.call_function(ops.gather_cross_attention_mask, (node, index, valid)), f"gather_{node.name}"
        )
    raise fail(gm, pass_name, f"{node.name} {tuple(shape)}: the pass trims [B, F, d] features and [B, 1, T, F] masks")
