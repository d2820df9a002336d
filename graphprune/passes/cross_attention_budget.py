"""Trimmed Llama (arXiv 2504.00557) for export: the prefill graph's top-k gets a constant K.

TensorRT's ONNX parser takes TopK only with a constant K (below 3840). A sample holds at most
``max_features = max_images · tiles · patches`` visual features, so it keeps at most
``ceil(keep · max_features)`` of them and that bound serves as K; the selection is unchanged for
every input within the budget (``ops.cross_attention_select``). Only ``select="topk"`` has a fixed
size; ``head_union``'s kept count depends on the scores.
"""

from __future__ import annotations

from torch import fx

from .. import ops
from ._graph import fail, finish

PASS = "cross_attention_budget"


def cross_attention_budget(gm: fx.GraphModule, max_features: int) -> fx.GraphModule:
    """Give the ``graphprune_select`` node of a trimmed prefill graph the feature budget ``max_features``."""
    if isinstance(max_features, bool) or not isinstance(max_features, int) or max_features < 1:
        raise ValueError(f"max_features must be an int >= 1 (visual features per sample); got {max_features!r}")
    selects = [node for node in gm.graph.nodes if node.target is ops.cross_attention_select]
    if len(selects) != 1:
        raise fail(gm, PASS, f"expected one graphprune_select node (run cross_attention_trim), found {len(selects)}")
    if selects[0].args[3] != "topk":
        raise fail(gm, PASS, f"select={selects[0].args[3]!r} has no fixed size; only select='topk' takes a budget")
    selects[0].kwargs = {**selects[0].kwargs, "max_features": max_features}
    return finish(gm, PASS, f"top-k K fixed for at most {max_features} features per sample")
