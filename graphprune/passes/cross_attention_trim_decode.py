"""Trimmed Llama's decode step (arXiv 2504.00557): cross-attention layers after the first attend over
their trimmed cache.

The decode graph reads the features' keys and values from each cross-attention layer's past and
builds one ``[B, 1, T, F]`` cross-attention mask for all of them. Layers after the first cache only
the ``K'`` kept features, so the pass gives them that mask gathered on the feature axis and
re-points the feature count they read to ``K'``. The first cross-attention layer keeps all F.

New inputs: ``graphprune_cache_index [B, K']`` (the feature held by each trimmed-cache slot) and
``graphprune_cache_valid [B, K']`` (False for padding slots).
"""

from __future__ import annotations

from torch import fx

from ..methods import CrossAttentionTrim
from . import _graph
from .cross_attention_trim import trim_feature_inputs

PASS = "cross_attention_trim_decode"


def cross_attention_trim_decode(gm: fx.GraphModule, method: CrossAttentionTrim) -> fx.GraphModule:
    """Give the decode graph's later cross-attention layers a mask and feature count that fit their cache."""
    layout = _graph.layout_of(gm, PASS)
    method.check_cross_attention_layers(layout.cross_attention_layers)
    first, *later = layout.cross_attention_layers
    features = _graph.symbol(_graph.placeholder(gm, "cross_attention_mask").meta["val"].shape[3])
    trimmed_pasts = {f"past_{2 * i + j}" for i in later for j in (0, 1)}
    _graph.move_size_reads(
        gm, features, trimmed_pasts, _graph.placeholder(gm, f"past_{2 * first}")
    )  # the first keeps all
    cache_index = _graph.add_placeholder(gm, "graphprune_cache_index")
    cache_valid = _graph.add_placeholder(gm, "graphprune_cache_valid")
    with gm.graph.inserting_before(_graph.first_node_of_layer(gm, layout, later[0])):
        trimmed = trim_feature_inputs(gm, PASS, later, features, cache_index, cache_valid)
    return _graph.finish(gm, PASS, f"layers {later} attend over their trimmed cache; trimmed {trimmed}")
