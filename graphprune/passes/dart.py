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
PIVOT_SCORE = 2.0  # above every -cosine: the visual pivots are kept first
_EPS = 1e-8  # torch.nn.functional.cosine_similarity's


def _top(values: torch.Tensor, candidates: torch.Tensor, most: int) -> torch.Tensor:
    """``[B, N]`` bool: the ``most`` candidates with the largest ``values`` (all where fewer), ties to the earlier."""
    counts = candidates.new_full((candidates.shape[0], 1), most, dtype=torch.long)
    return ops.best_per_sample(torch.where(candidates, values, float("-inf")), counts, most) & candidates


def _rows(mask: torch.Tensor, most: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions where ``mask [B, N]`` holds (at most ``most`` per sample), ascending: ``index [B, most]`` and
    ``valid [B, most]`` (False for the spare columns, whose index is 0)."""
    batch, seq_len = mask.shape
    earlier = (seq_len - torch.arange(seq_len, device=mask.device)).float().expand(batch, seq_len)  # exact < 2**24
    order = torch.cat([torch.where(mask, earlier, 0.0), earlier.new_zeros(batch, most)], dim=-1).topk(most, dim=-1)
    valid = order.values > 0
    return torch.where(valid, order.indices, 0), valid


def dart_scores(
    hidden: torch.Tensor,
    key_states: torch.Tensor,
    norm_weight: torch.Tensor,
    visual_mask: torch.Tensor,
    attention_mask: torch.Tensor,
    pivots: int,
    text_pivots: int,
) -> torch.Tensor:
    """DART scores ``[B, N]`` (module docstring, steps 2-5) from the hidden states entering layer ``k``
    ``[B, N, d]``, layer ``k - 1``'s keys ``[B, H_kv, N, D]`` and the final norm's weight ``[d]``; float32."""
    batch, seq_len = visual_mask.shape
    real = attention_mask.bool()
    visual = visual_mask & real
    positions = torch.arange(seq_len, device=hidden.device).expand(batch, seq_len)
    last = torch.where(real, positions, 0).amax(dim=-1, keepdim=True)
    norms = key_states.float().abs().sum(dim=(1, 3))
    visual_pivots = _top(norms, visual & (positions != last), pivots)
    pivot = visual_pivots
    if text_pivots:
        first = positions.masked_fill(~visual, seq_len).amin(dim=-1, keepdim=True)
        pivot = pivot | _top(norms, real & ~visual & (positions > first), text_pivots)
    # a visual pivot's rank among the sample's visual pivots (0: the largest norm; ties: the earlier)
    index, valid = _rows(visual_pivots, pivots)
    pivot_norms, pivot_positions = norms.gather(1, index)[:, None, :], index[:, None, :]
    ahead = (pivot_norms > norms[:, :, None]) | (
        (pivot_norms == norms[:, :, None]) & (pivot_positions < positions[..., None])
    )
    rank = (ahead & valid[:, None, :]).sum(dim=-1)
    # duplication: the largest cosine similarity to a pivot's features
    features = hidden.float() * norm_weight.float()
    unit = features / features.norm(dim=-1, keepdim=True).clamp(min=_EPS)
    index, valid = _rows(pivot, pivots + text_pivots)
    pivot_units = unit.gather(1, index[:, :, None].expand(-1, -1, unit.shape[-1]))
    similarity = (unit @ pivot_units.transpose(1, 2)).masked_fill(~valid[:, None, :], float("-inf"))
    scores = torch.where(visual_pivots, PIVOT_SCORE + (pivots - rank).float(), -similarity.amax(dim=-1))
    return torch.where(visual, scores, 0.0)


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
        return gm.graph.call_function(dart_scores, (*args, method.pivots, method.text_pivots))

    gathered = insert_pruning(gm, PASS, method, scores)
    summary = f"k={k} keep={method.keep} pivots={method.pivots}+{method.text_pivots}"
    return _graph.finish(gm, PASS, f"{summary}; gathered for layers >= {k}: {gathered}")
