"""PyramidDrop (Xing et al., CVPR 2025, arXiv 2410.17247) as a rewrite of a captured prefill graph: FastV's
pruning at several stages, each on the survivors of the one before.

The rule as graphprune computes it, per sample (``layers = (l_1, .., l_S)``, ``v_0`` = the sample's visual count):

1. Layers ``0 .. l_1 - 1`` run unmodified.
2. Stage ``s`` (``s = 1 .. S``), before layer ``l_s``: layer ``l_s - 1``'s attention probabilities (its own query
   and key after RoPE, GQA keys repeated, head mean, float32; ``ops.fastv_scores``) from the ``query`` row
   (``"last"``: the last real position; ``"mean"``: the mean of the real rows) over the positions that layer ran on.
3. ``v_s = ceil(keep * v_{s-1})`` (``methods.n_keep``: at least 1 where ``v_{s-1}`` is). Kept: every text
   position and ``v_s`` of the ``v_{s-1}`` visual survivors: the last real position when visual, then the
   highest-scoring others (ties: the earlier position). Order is preserved, as are position ids (RoPE).
4. Layers ``l_s .. l_{s+1} - 1`` run on stage ``s``'s survivors and cache only them; stage ``s``'s kept count per
   sample, ``n_real - v_0 + v_s``, depends only on the layout, so every shape is known before the forward.

Inserted per stage (``ops.fastv_select`` on the previous stage's slots): the selection ``graphprune_keep_index``
(slot of the previous stage per new slot) composed into original positions, and the gathers of everything layers
``>= l_s`` read along the sequence: nodes from before ``l_1`` (RoPE cos/sin, the 4-D mask, the sequence length,
DeepStack inputs) are gathered from their original with the composed index, the residual stream from the previous
stage's slots. New inputs: ``graphprune_visual_mask [B, N]`` and one ``graphprune_slots_{s} [S_s]`` per stage
(``arange`` of the stage's longest kept count). New outputs, after the cache: per stage ``index [B, S_s]`` (original
positions) and ``valid [B, S_s]``, the last stage's followed by ``graphprune_scores [B, N]``: ``s + p`` at a
position that stage ``s`` (0-based) ranked last with probability ``p``, so a later survivor scores higher.

Where the authors' code (github.com/Cooperx521/PyramidDrop, ``modeling_llama_pdrop.py``, ``pdrop_rank_drop``)
differs from the paper or from graphprune:
- The paper ranks "at the end of each stage" with a lightweight attention of the last instruction token. The code
  (``rank_layer = layer_idx + 1``) projects the output of layer ``l - 1`` with layer ``l``'s own input norm,
  ``q_proj`` and ``k_proj`` (an extra computation), so it ranks with the first pruned layer's query and key;
  graphprune ranks with layer ``l - 1``'s attention, which that layer computes anyway (FastV's rule; no extra
  projection, exportable).
- Query: at inference the row ``prompt_len + image_tokens - 1``, the last prompt token (the last real position of
  a prompt without padding); in training the tokens before each answer. graphprune: the last real position.
- Schedule: ``--layer_list [8,16,24]`` and ``--image_token_ratio_list [0.5,0.25,0.125]`` (lambda = 0.5), counts
  ``int(n_visual * ratio_s)`` (floor, from the original count; 0 possible); graphprune iterates ``ceil(keep * v)``
  (the same 288/144/72 for 576 tokens; at least one token).
- After each drop the code renumbers the survivors' position ids ``0 .. len - 1`` (and shifts decode positions by
  the dropped count), so later layers see compacted RoPE positions; graphprune keeps original positions, as FastV.
- The code takes one contiguous image span per sample, right padding, and casts the probabilities to the model's
  dtype before the head mean (ties in fp16/bf16); graphprune takes any visual positions, left padding, float32.
"""

from __future__ import annotations

import torch
from torch import fx

from .. import ops
from ..methods import PDrop
from . import _graph

PASS = "pdrop"


def slot_visual(visual_mask: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``[B, S]`` bool: which valid slots hold a visual position (``index``: original position per slot)."""
    return visual_mask.gather(1, index) & valid


def compose(index: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
    """Original positions ``[B, S']`` of slots chosen among earlier slots (``relative``) holding ``index [B, S]``."""
    return index.gather(1, relative)


def stage_scores(
    total: torch.Tensor | None, scores: torch.Tensor, index: torch.Tensor | None, valid: torch.Tensor | None, stage: int
) -> torch.Tensor:
    """``graphprune_scores [B, N]`` after stage ``stage``: ``stage + p`` at the positions it ranked (``scores`` over
    its slots, which hold ``index``; all positions at stage 0), earlier values elsewhere."""
    if total is None:
        return scores.float()
    ranked = torch.where(valid, scores.float() + stage, float("-inf"))
    return total.scatter_reduce(1, index, ranked, "amax")


def pdrop(gm: fx.GraphModule, method: PDrop) -> fx.GraphModule:
    """Insert PyramidDrop's ranking and pruning before every stage layer into a prefill graph."""
    layout = _graph.layout_of(gm, PASS)
    method.check_layers(layout.num_layers)
    if layout.layer_masks:
        raise _graph.fail(gm, PASS, "the decoder has per-layer masks (Gemma 3), which PDrop does not gather")
    seq = _graph.symbol(_graph.placeholder(gm, "inputs_embeds").meta["val"].shape[1])
    outputs = _graph.output_node(gm).args[0]
    ranking = [
        (
            _graph.attention_query(
                gm, PASS, f"{layout.layers}.{layer - 1}.{layout.attention}", layout.query_proj, layout.key_proj
            ),
            outputs[1 + 2 * (layer - 1)],
        )
        for layer in method.layers
    ]
    boundaries = [_graph.first_node_of_layer(gm, layout, layer) for layer in method.layers]
    visual_mask = _graph.add_placeholder(gm, "graphprune_visual_mask")
    attention_mask = _graph.placeholder(gm, "attention_mask")
    graph = gm.graph
    originals: dict[fx.Node, fx.Node] = {}  # stand-in -> the node before layer l_1 that it shortens
    index = valid = total = None
    selections, gathered = [], []
    for stage, ((query_states, key_states), boundary) in enumerate(zip(ranking, boundaries, strict=True)):
        slots = _graph.add_placeholder(gm, f"graphprune_slots_{stage}")
        crossing = _graph.crossing_nodes(gm, boundary)
        with graph.inserting_before(boundary):
            if index is None:
                visual, real = visual_mask, attention_mask
            else:
                visual, real = graph.call_function(slot_visual, (visual_mask, index, valid)), valid
            args = (query_states, key_states, real, layout.scaling, method.query, None)
            scores = graph.call_function(ops.fastv_scores, args)
            relative, stage_valid = _graph.insert_selection(
                gm, ops.fastv_select, (scores, visual, real, slots, method.keep)
            )
            composed = relative if index is None else graph.call_function(compose, (index, relative))
            total = graph.call_function(stage_scores, (total, scores, index, valid, stage))
            pruned_length = _graph.size_of(gm, relative, 1, f"pruned_length_{stage}")
            from_original = {
                (None, (1,)): (ops.gather_sequence, (composed, 1)),  # [B, N, ...]: RoPE cos/sin, DeepStack
                (4, (2, 3)): (ops.gather_attention_mask, (composed, stage_valid)),  # [B, h, N, N] masks
            }
            from_slots = {(None, (1,)): (ops.gather_sequence, (relative, 1))}  # the residual stream
            for node, users in crossing.items():
                source = originals.get(node)
                if source is None and node.name.startswith(_graph.INSERTED_PREFIX) and "val" not in node.meta:
                    raise _graph.fail(gm, PASS, f"{node.name}, inserted, crosses into layer {method.layers[stage]}")
                gathers = from_original if source is not None or index is None else from_slots
                replacement = _graph.stand_in(gm, PASS, source or node, seq, pruned_length, gathers)
                if replacement is not None:
                    _graph.repoint(node, replacement, users)
                    originals[replacement] = source or node
                    gathered.append(f"{node.name}@{stage}")
        index, valid = composed, stage_valid
        selections += [_graph.named(index, f"keep_index_{stage}"), valid]
    _graph.append_outputs(gm, [*selections, _graph.named(total, "scores")])
    stages = ", ".join(str(layer) for layer in method.layers)
    return _graph.finish(gm, PASS, f"layers={stages} keep={method.keep} query={method.query}; gathered: {gathered}")
