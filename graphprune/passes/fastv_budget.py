"""FastV (arXiv 2403.06764) for export: the prefill graph's top-k gets a constant K.

TensorRT's ONNX parser takes TopK only with a constant K (below 3840). When a sample can hold at
most ``max_visual`` visual positions (LLaVA-1.5: 576 per image times the images per sample), every
sample keeps at most ``ceil(keep * max_visual)`` of them (its last real position among them when it is
visual), so that bound serves as K; the selection is unchanged for every input within the budget
(``ops.fastv_select``).
"""

from __future__ import annotations

from torch import fx

from .. import ops
from . import _graph

PASS = "fastv_budget"


def fastv_budget(gm: fx.GraphModule, max_visual: int) -> fx.GraphModule:
    """Give the ``graphprune_select`` node of a FastV prefill graph the visual budget ``max_visual``."""
    _graph.positive_int(max_visual, PASS, "max_visual", "visual positions per sample")
    select = _graph.only_call(gm, PASS, ops.fastv_select, "the fastv pass")
    select.kwargs = {**select.kwargs, "max_visual": max_visual}
    return _graph.finish(gm, PASS, f"top-k K fixed for at most {max_visual} visual positions per sample")
