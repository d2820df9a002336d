"""``graphprune.export.tensorrt``: the ONNX export's graphs, compiled by torch-tensorrt (dynamo) on a GPU host."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..runtime import optimized_state
from .onnx_export import export_manifest, family_graphs
from .progress import progress
from .staging import staged_folder, writable_folder
from .trt_profiles import trt_profiles


def tensorrt(
    model: nn.Module,
    out_dir: str | Path,
    *,
    example_inputs: dict,
    overwrite: bool = False,
    max_images: int | None = None,
    max_visual_tokens: int | None = None,
    max_batch: int = 1,
    max_text: int = 512,
    max_new_tokens: int = 256,
) -> Path:
    """Compile ``model``'s export graphs with torch-tensorrt (``ir="dynamo"``, fp16) into ``out_dir``.

    Every graph of ``graphprune.export.onnx`` (vision, embed, pruned prefill with its ranking and
    gather nodes, decode step) is compiled with one optimisation profile (min/opt/max shapes from
    ``trt_profiles``: batch up to ``max_batch``, sequences of up to the visual budget (``max_images``
    images, or ``max_visual_tokens`` for Qwen2-VL) plus ``max_text`` tokens, the visual budget
    fixing the top-k K) and saved as ``{graph}.ep``
    (``torch_tensorrt.save``) beside ``manifest.json``. Needs torch-tensorrt and a CUDA GPU; the
    engines run on that GPU model and TensorRT version only (for a Jetson Orin, export ONNX and run
    the ``build_engines.sh`` it writes on the device).
    """
    torch_tensorrt = require_tensorrt()
    state = optimized_state(model)
    out_dir = writable_folder(out_dir, overwrite)
    graphs, details = family_graphs(model.cuda(), _on_cuda(example_inputs), True, max_images, max_visual_tokens)
    entries = {
        graph.name: {
            "file": f"{graph.name}.ep",
            "inputs": [
                {
                    "name": name,
                    "dtype": str(arg.dtype).removeprefix("torch."),
                    "shape": [graph.dynamic.get(name, {}).get(axis, size) for axis, size in enumerate(arg.shape)],
                }
                for name, arg in zip(graph.inputs, graph.args, strict=True)
            ],
            "outputs": [{"name": name, "dtype": None, "shape": None} for name in graph.outputs],
            "dynamic_axes": {name: dict(axes) for name, axes in graph.dynamic.items()},
        }
        for graph in graphs
    }
    manifest = export_manifest("torch_tensorrt", state, True, "float16", 0, entries, details)
    profiles = trt_profiles(manifest, max_batch=max_batch, max_text=max_text, max_new_tokens=max_new_tokens)
    with staged_folder(out_dir, overwrite) as staging:
        for graph in progress(graphs, "TensorRT compile"):
            inputs = [
                torch_tensorrt.Input(min_shape=low, opt_shape=opt, max_shape=high, dtype=arg.dtype, name=name)
                for (name, (low, opt, high)), arg in zip(profiles[graph.name].items(), graph.args, strict=True)
            ]
            compiled = torch_tensorrt.compile(
                graph.module, ir="dynamo", inputs=inputs, enabled_precisions={torch.float16, torch.float32}
            )
            torch_tensorrt.save(compiled, str(staging / f"{graph.name}.ep"), inputs=list(graph.args))
        manifest.write(staging)
    return out_dir


def require_tensorrt():
    """torch_tensorrt, or an error saying what is missing: torch-tensorrt, or a CUDA GPU."""
    try:
        import torch_tensorrt
    except ImportError as error:
        raise ImportError(
            "graphprune.export.tensorrt needs torch-tensorrt on a CUDA host: pip install graphprune[tensorrt] "
            "(for a Jetson Orin, use graphprune.export.onnx and the build_engines.sh it writes)"
        ) from error
    if not torch.cuda.is_available():
        raise RuntimeError(
            "graphprune.export.tensorrt needs a CUDA GPU; on a machine without one use graphprune.export.onnx "
            "and build the engines on the target with the build_engines.sh it writes"
        )
    return torch_tensorrt


def _on_cuda(inputs: dict) -> dict:
    return {name: value.cuda() if isinstance(value, torch.Tensor) else value for name, value in inputs.items()}
