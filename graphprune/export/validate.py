"""Validation of written ONNX files against the PyTorch graphs they came from, as optimum's exporters do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .graph_export import GraphExport
from .progress import progress
from .shared_weights import SharedInitializers


class ExportValidationError(RuntimeError):
    """An exported file does not compute what its PyTorch graph computes."""


SELECTION = ("graphprune_keep_index", "graphprune_slot_valid")  # compared first: the cache and logits follow them
NEAR_TIE = (
    " (in float16 a near tie at the cut can fall either way: ONNX Runtime computes the ranking's query and key"
    " with float32 islands, PyTorch op by op in float16; validate on other example_inputs, or export in float32)"
)


def validate(folder: Path, graphs: list[GraphExport], rtol: float, providers: list[str] | None = None) -> dict:
    """Run each ``{name}.onnx`` in ONNX Runtime on its example arguments; compare every output with PyTorch.

    Floating outputs must agree within ``rtol`` relative to the reference's largest magnitude (at the
    positions ``GraphExport.defined`` marks, for cache outputs); integer and boolean outputs exactly,
    the pruning's selection first (what it keeps decides the rest).
    Returns ``{graph: {output: relative error}}``; raises ``ExportValidationError`` naming the first mismatch.
    """
    import onnxruntime

    errors, shared = {}, SharedInitializers(onnxruntime)
    for graph in progress(graphs, "validation against PyTorch"):
        session = shared.session(folder / f"{graph.name}.onnx", providers)
        feeds = {name: arg.cpu().numpy() for name, arg in zip(graph.inputs, graph.args, strict=True)}
        actual = session.run(list(graph.outputs), feeds)
        with torch.no_grad():
            expected = graph.module(*graph.args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        errors[graph.name] = {}
        float16 = any(out.dtype == np.float16 for out in actual)
        compared = sorted(zip(graph.outputs, actual, expected, strict=True), key=lambda out: out[0] not in SELECTION)
        for name, got, want in compared:
            want = want.float().cpu().numpy() if want.is_floating_point() else want.cpu().numpy()
            got = got.astype(np.float32) if np.issubdtype(got.dtype, np.floating) else got
            if got.shape != want.shape:
                raise ExportValidationError(f"{graph.name}.onnx output {name}: shape {got.shape}, PyTorch {want.shape}")
            if name in graph.defined:
                keep = graph.defined[name].cpu().numpy()[:, None, :, None]
                got, want = np.where(keep, got, 0), np.where(keep, want, 0)
            if np.issubdtype(want.dtype, np.floating):
                error = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))
            else:
                error = float(0.0 if np.array_equal(got, want) else np.inf)
            errors[graph.name][name] = error
            if not error <= rtol:
                hint = NEAR_TIE if name in SELECTION and float16 else ""
                raise ExportValidationError(
                    f"{graph.name}.onnx output {name} differs from PyTorch: relative error {error:.3g} > {rtol:g}{hint}"
                )
    return errors
