"""FastV (arXiv 2403.06764) for export: the prefill graph's top-k gets a constant K.

TensorRT's ONNX parser takes TopK only with a constant K (below 3840). When a sample can hold at
most ``max_visual`` visual positions (LLaVA-1.5: 576 per image times the images per sample), every
sample keeps at most ``ceil(keep * max_visual)`` of them, so that bound serves as K; the selection
is unchanged for every input within the budget (``ops.fastv_select``).
"""

from __future__ import annotations

from torch import fx

from .. import ops
from ._graph import fail, finish

PASS = "fastv_budget"


def fastv_budget(gm: fx.GraphModule, max_visual: int) -> fx.GraphModule:
    """Give the ``graphprune_select`` node of a FastV prefill graph the visual budget ``max_visual``."""
    if isinstance(max_visual, bool) or not isinstance(max_visual, int) or max_visual < 1:
        raise ValueError(f"max_visual must be an int >= 1 (visual positions per sample); got {max_visual!r}")
    selects = [node for node in gm.graph.nodes if node.target is ops.fastv_select]
    if len(selects) != 1:
        raise fail(gm, PASS, f"expected one graphprune_select node (run the fastv pass first), found {len(selects)}")
    selects[0].kwargs = {**selects[0].kwargs, "max_visual": max_visual}
    return finish(gm, PASS, f"top-k K fixed for at most {max_visual} visual positions per sample")
