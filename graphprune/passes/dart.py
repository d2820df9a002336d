"""DART (Wen et al., arXiv 2502.11494, "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More") as a rewrite of a captured prefill graph: FastV's pass with other scores.

The rule as graphprune computes it, per sample (``n_keep = ceil(keep * n_visual)``, ``methods.n_keep``):

1. Layers ``0 .. k-1`` run unmodified.
2. Key norms: the L1 norm of layer ``k - 1``'s key at each position (after RoPE, as the layer caches it; over
   every key/value head).
3. Pivots: the ``pivots`` visual positions with the largest key norms, the last real position excepted (it is
   always kept, and is no pivot), and the ``text_pivots`` real text positions after the sample's first visual
   position with the largest key norms; fewer where there are fewer. Ties: the earlier.
4. Duplication: ``dup(j)`` = the largest cosine similarity between position ``j``'s hidden state entering layer
   ``k`` and a pivot's, the hidden states scaled by the decoder's final RMSNorm weight (the authors compare
   ``norm(h)``; RMSNorm's per-token factor does not change a cosine).
5. Kept: every text position, and ``n_keep`` visual ones: the last real position when visual, the visual pivots
   (as many as fit, the largest key norms first), then the least duplicated others (ties: the earlier). Order is
   preserved; layers ``>= k`` run as for FastV (``ops.fastv_select`` lays the kept positions out).
   ``graphprune_scores`` holds ``2 + pivots - r`` at the visual pivot of norm rank ``r`` (0: the largest),
   ``-dup`` at the other visual positions, 0 at text.

Where the authors' code (github.com/ZichenWen1/DART, ``get_retained_image_token``) differs: it keeps, pivot by
pivot (in Python set order), ``max_num_trunction // (pivots + text_pivots)`` tokens least similar to that pivot
among those not yet taken, so its kept count is ``pivots + 8 * that`` (132 for its default 128) rather than
``ceil(keep * n_visual)``, and the choice depends on the pivot order; it assumes one contiguous image span and
batch size 1 (text pivots: the tokens after that span); it has no always-kept last position. graphprune scores
each token against its nearest pivot at once, so the kept count follows FastV's layout formula and every pruned
shape is known before the forward (batching, static caches, export).
"""

from __future__ import annotations

import torch
from torch import fx

from .. import ops
from ..methods import DART
from . import _graph
from .fastv import insert_pruning

PASS = "dart"


def _final_norm_weight(gm: fx.GraphModule) -> fx.Node:
    """The ``get_attr`` node of the decoder's final norm weight (``decoder.norm.weight``)."""
    found = [node for node in gm.graph.nodes if node.op == "get_attr" and node.target == "decoder.norm.weight"]
    if len(found) != 1:
        raise _graph.fail(gm, PASS, f"expected one decoder.norm.weight in the graph, found {len(found)}")
    return found[0]


def dart(gm: fx.GraphModule, method: DART) -> fx.GraphModule:
    """Insert DART's duplication ranking after layer ``k - 1`` and pruning before layer ``k`` into a prefill graph."""
    layout = _graph.layout_of(gm, PASS)
    method.check_layers(layout.num_layers)
    k = method.k
    boundary = _graph.first_node_of_layer(gm, layout, k)
    hidden = boundary.args[0] if boundary is not None and boundary.args else None
    value = getattr(hidden, "meta", {}).get("val")
    if not isinstance(value, torch.Tensor) or value.dim() != 3:
        raise _graph.fail(gm, PASS, f"layer {k}'s first node reads no [B, N, d] hidden states")
    key_states = _graph.output_node(gm).args[0][1 + 2 * (k - 1)]
    norm_weight = _final_norm_weight(gm)

    def scores(visual_mask: fx.Node, attention_mask: fx.Node) -> fx.Node:
        args = (hidden, key_states, norm_weight, visual_mask, attention_mask)
        return gm.graph.call_function(ops.dart_scores, (*args, method.pivots, method.text_pivots))

    gathered = insert_pruning(gm, PASS, method, scores)
    summary = f"k={k} keep={method.keep} pivots={method.pivots}+{method.text_pivots}"
    return _graph.finish(gm, PASS, f"{summary}; gathered for layers >= {k}: {gathered}")
