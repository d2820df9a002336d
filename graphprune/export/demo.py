"""``graphprune export``: export a tiny demo model (random weights) and check the files against PyTorch."""

from __future__ import annotations

from pathlib import Path

import torch

from ..methods import Method
from .family import export_families
from .fastv_family import DEMO_LAYERS as FASTV_LAYERS
from .trt_tables import DEFAULT as TRT_DEFAULT

__all__ = ["FASTV_LAYERS", "demo", "demo_names", "export_and_check"]


def _demo_families() -> dict:
    return {name: kind for kind in export_families().values() for name in kind.demo_names}


def demo_names() -> list[str]:
    """The demo model names of every export family, sorted (``graphprune export --model``'s choices)."""
    return sorted(_demo_families())


def demo(
    out: str | Path,
    format: str,
    method: Method,
    family: str = "llava",
    overwrite: bool = False,
    trt_version: str | None = TRT_DEFAULT,
) -> bool:
    """Export a tiny random-weight model of ``family`` (one of ``demo_names()``: Mllama for CrossAttentionTrim,
    arXiv 2504.00557; FastV for the others) optimised with ``method`` to ``out``, its ONNX graphs checked against
    TensorRT ``trt_version``; for ONNX, True if ONNX Runtime's greedy tokens equal PyTorch's."""
    names = _demo_families()
    if family not in names:
        raise ValueError(f"graphprune has no demo model {family!r}; demo models: {', '.join(sorted(names))}")
    model, inputs = names[family].demo(method, family)
    return export_and_check(model, inputs, out, format, overwrite, trt_version)


def export_and_check(
    model, inputs: dict, out: str | Path, format: str, overwrite: bool, trt_version: str | None = TRT_DEFAULT
) -> bool:
    """Export the optimized ``model`` (``example_inputs=inputs``) to ``out`` as ``format`` (``onnx`` or
    ``tensorrt``) and print what was written; for ONNX, True if ONNX Runtime's greedy tokens equal PyTorch's."""
    from . import OrtGenerator, onnx, tensorrt

    if format == "tensorrt":
        folder = tensorrt(model, out, example_inputs=inputs, overwrite=overwrite)
        print(f"wrote {folder}: {', '.join(sorted(path.name for path in folder.iterdir()))}")
        return True
    folder = onnx(model, out, example_inputs=inputs, overwrite=overwrite, trt_version=trt_version)
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:<18} {path.stat().st_size / 1024:8.1f} KiB")
    expected = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    tokens = OrtGenerator(folder).generate(**inputs, max_new_tokens=8)
    same = torch.equal(tokens, expected)
    print(f"validated against PyTorch; ONNX Runtime greedy tokens {'equal' if same else 'DIFFER FROM'} PyTorch's")
    print(f"Jetson Orin: copy {folder} to the device and run its build_engines.sh (see TENSORRT.md there)")
    return same
