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
from . import _graph

PASS = "cross_attention_budget"


def cross_attention_budget(gm: fx.GraphModule, max_features: int) -> fx.GraphModule:
    """Give the ``graphprune_select`` node of a trimmed prefill graph the feature budget ``max_features``."""
    _graph.positive_int(max_features, PASS, "max_features", "visual features per sample")
    select = _graph.only_call(gm, PASS, ops.cross_attention_select, "cross_attention_trim")
    if select.args[3] != "topk":
        raise _graph.fail(gm, PASS, f"select={select.args[3]!r} has no fixed size; only select='topk' takes a budget")
    select.kwargs = {**select.kwargs, "max_features": max_features}
    return _graph.finish(gm, PASS, f"top-k K fixed for at most {max_features} features per sample")
