"""``explain``: one pruned prefill, with what was kept and what it saved."""

from __future__ import annotations

import torch
from torch import nn

from .plot import visual_layouts
from .report import Report
from .runtime import optimized_state, recorded_prefills

__all__ = ["Report", "explain"]


@torch.no_grad()
def explain(model: nn.Module, **inputs) -> Report:
    """Run one pruned prefill of ``model`` (already ``optimize``d) on ``inputs`` and report it."""
    state = optimized_state(model)
    with recorded_prefills() as records:
        model(**inputs, use_cache=True)
    if not records:
        raise ValueError("graphprune.explain runs one prefill: pass a prompt without past_key_values")
    element = next(model.parameters()).element_size()
    report = state.handler.report(model, state, records[-1], element)
    report.unit, report.layouts = state.handler.unit, visual_layouts(model, state.adapter.name, inputs)
    return report
