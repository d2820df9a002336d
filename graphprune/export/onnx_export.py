"""``graphprune.export.onnx``: an optimised model's graphs as ONNX files plus ``manifest.json``."""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from ..methods import method_to_dict
from ..registry import handler_for
from ..runtime import optimized_state
from .family import export_family
from .graph_export import GraphExport
from .integrity import file_records
from .manifest import Manifest
from .progress import progress
from .shared_weights import FILE as WEIGHTS
from .shared_weights import SharedWeights
from .staging import staged_folder, writable_folder
from .trt_parser import check_version, export_fit, require_fit
from .trt_recipe import trt_recipe
from .trt_tables import DEFAULT as TRT_DEFAULT
from .validate import validate as validate_files

logger = logging.getLogger(__name__)

OPSETS = range(18, 21)  # the torch.onnx dynamo exporter starts at 18; TensorRT 10's parser ends at 20
VALIDATION_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2}  # the dtypes exported, with their tolerance
BFLOAT16_REASON = (  # ONNX Runtime 1.32's errors on a bfloat16 export (README, "ONNX export")
    " (ONNX Runtime's CPU provider has no bfloat16 Mul or Where kernel, and ONNX's Conv takes bfloat16 only"
    " from opset 22)"
)


def require_onnx() -> None:
    """ImportError saying how to install the ONNX extra, unless onnx, onnxscript and onnxruntime import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"graphprune's ONNX export needs onnx, onnxscript and onnxruntime ({error.name} is missing): "
            "pip install graphprune[onnx]"
        ) from error


def _check_dtype(dtype: torch.dtype) -> None:
    """A one-line ``ValueError`` unless graphprune exports models of ``dtype`` (float32, float16)."""
    if dtype not in VALIDATION_RTOL:
        why = BFLOAT16_REASON if dtype == torch.bfloat16 else ""
        raise ValueError(
            f"graphprune exports float32 or float16 models to ONNX, not {str(dtype).removeprefix('torch.')}{why}; "
            "call model.half() (TensorRT runs float16 natively) or model.float() before exporting"
        )


def family_graphs(
    model: nn.Module, example_inputs: dict, prune: bool, max_images: int | None, max_visual_tokens: int | None
) -> tuple[list[GraphExport], dict]:
    """The export graphs of an optimised ``model``'s family and what its manifest records about the model."""
    state = optimized_state(model)
    if prune and handler_for(state.method).budget_pass is None:
        raise ValueError(
            f"graphprune's export does not carry {type(state.method).__name__} yet: export a FastV or DART model, "
            "or pass prune=False for the unpruned decoder"
        )
    why = f" ({state.adapter.export_refusal})" if state.adapter.export_refusal else ""
    family = export_family(
        state.adapter.name, f"graphprune cannot export {type(model).__name__} ({state.adapter.name}) yet{why}"
    )
    budgets = {"max_images": max_images, "max_visual_tokens": max_visual_tokens}
    for name, value in budgets.items():
        if value is not None and name != family.budget:
            raise ValueError(f"{family.name} exports take {family.budget} as their visual budget, not {name}")
    return family.export_graphs(model, state, example_inputs, budgets[family.budget], prune)


def export_manifest(format: str, state, prune: bool, dtype: str, opset: int, entries: dict, details: dict) -> Manifest:
    """The manifest of an export: its ``format``, the method (None unpruned), dtype, graph ``entries`` and the
    family's ``details``."""
    method = method_to_dict(state.method) if prune else None
    return Manifest(
        format=format,
        method=method,
        dtype=dtype,
        opset=opset,
        graphprune_version=__version__,
        graphs=entries,
        **details,
    )


def _dynamic_shapes(graph: GraphExport):
    """The inputs' dynamic axes, shaped like ``forward``'s parameters (a ``*args`` parameter takes a tuple)."""
    shapes = tuple(graph.dynamic.get(name) for name in graph.inputs)
    parameters = list(inspect.signature(graph.module.forward).parameters.values())
    variadic = [i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_POSITIONAL]
    return (*shapes[: variadic[0]], shapes[variadic[0] :]) if variadic else shapes


def _signature(values) -> list[dict]:
    import onnx

    return [
        {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name,
            "shape": [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim],
        }
        for value in values
    ]


def _write(graph: GraphExport, folder: Path, opset: int, weights: SharedWeights) -> dict:
    """Export one graph with the dynamo exporter, its initializers into the shared weights file; its manifest
    entry."""
    import onnx
    import onnx_ir

    path = folder / f"{graph.name}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)  # axes named twice
        program = torch.onnx.export(
            graph.module,
            graph.args,
            dynamo=True,
            input_names=list(graph.inputs),
            output_names=list(graph.outputs),
            dynamic_shapes=_dynamic_shapes(graph),
            opset_version=opset,
            verbose=False,
        )
    weights.add(program.model)
    onnx_ir.save(program.model, path)
    del program
    proto = onnx.load(str(path), load_external_data=False)
    inputs, outputs = _signature(proto.graph.input), _signature(proto.graph.output)
    dynamic = {
        spec["name"]: {axis: dim for axis, dim in enumerate(spec["shape"]) if isinstance(dim, str)}
        for spec in inputs + outputs
    }
    logger.info("wrote %s (%d nodes)", path.name, len(proto.graph.node))
    return {"file": path.name, "inputs": inputs, "outputs": outputs, "dynamic_axes": dynamic}


def onnx(
    model: nn.Module,
    out_dir: str | Path,
    *,
    example_inputs: dict,
    overwrite: bool = False,
    validate: bool = True,
    opset: int = 18,
    max_images: int | None = None,
    max_visual_tokens: int | None = None,
    prune: bool = True,
    trt_version: str | None = TRT_DEFAULT,
) -> Path:
    """Write ``model`` (changed by ``graphprune.optimize``) as ONNX files and ``manifest.json`` into ``out_dir``.

    Files (LLaVA): ``vision.onnx`` (vision tower + projector), ``embed.onnx`` (token embeddings with
    the image features placed), ``prefill.onnx`` (the pruned decoder prefill, ranking and gather
    nodes inside, logits at the last position and the cache per layer, pruned layers shorter) and
    ``decode.onnx`` (one step on explicit past keys/values), with dynamic batch and sequence axes.
    The visual budget, ``max_images`` per sample (default: the most in ``example_inputs``) times the
    visual tokens per image, makes FastV's top-k K a constant, as TensorRT needs; also written:
    ``TENSORRT.md`` and ``build_engines.sh`` (trtexec, Jetson Orin). ``prune=False`` writes the same
    decoder without the pruning pass (the baseline to compare against). Every graph is checked against
    TensorRT ``trt_version``'s ONNX parser rules (``"10.3"``: JetPack 6, default; ``"10.15"``: JetPack 7;
    ``"8.5"``: JetPack 5; None: no check) and ``TensorRTSupportError`` names a node it would refuse;
    ``TENSORRT.md`` says which JetPack versions the export fits.

    Qwen2-VL and Qwen2.5-VL: ``vision.onnx`` runs one image or video frame group at a time, the
    decoder takes M-RoPE positions ``[3, B, N]``, and the budget is ``max_visual_tokens`` per sample
    (default: the most in ``example_inputs``), as images differ in token count; Qwen3-VL's ``vision.onnx`` also
    gives the DeepStack features, which ``embed.onnx`` places in the prefill's ``deepstack_i`` inputs. Mllama
    (CrossAttentionTrim ``topk``): also ``masks.onnx``; the budget is ``max_images`` x tiles x patches.
    A family takes one of the two budget keywords and refuses the other.

    ``example_inputs`` (the model's processor output, with at least one image or video) drive the
    export; with ``validate`` the written files are run in ONNX Runtime on them and must match the
    PyTorch graphs (1e-4 relative in float32, 1e-2 in float16; bfloat16 is refused). ``out_dir`` is
    checked before any work: a new path, or with ``overwrite`` an empty folder or a graphprune export
    holding only what graphprune wrote (never the current folder, one above it or the home folder);
    anything else is refused. Files are written to a hidden folder beside ``out_dir`` and swapped into
    place at the end. Returns ``out_dir``.
    """
    require_onnx()
    state = optimized_state(model)
    if opset not in OPSETS:
        raise ValueError(f"opset must be in [{OPSETS[0]}, {OPSETS[-1]}]; got {opset!r}")
    if trt_version is not None:
        check_version(trt_version)
    dtype = next(model.parameters()).dtype
    _check_dtype(dtype)
    out_dir = writable_folder(out_dir, overwrite)
    graphs, details = family_graphs(model, example_inputs, prune, max_images, max_visual_tokens)
    with staged_folder(out_dir, overwrite) as staging:
        with SharedWeights(staging) as weights:
            entries = {graph.name: _write(graph, staging, opset, weights) for graph in progress(graphs, "ONNX export")}
        dtype_name = str(dtype).removeprefix("torch.")
        records = file_records(staging, [entry["file"] for entry in entries.values()], WEIGHTS, weights.tensors)
        details = details | {"weights": WEIGHTS, "files": records}
        manifest = export_manifest("onnx", state, prune, dtype_name, opset, entries, details)
        manifest.write(staging)
        files = {name: entry["file"] for name, entry in entries.items()}
        fit = export_fit(staging, files)
        if trt_version is not None:
            require_fit(fit, files, trt_version)
        trt_recipe(manifest, staging, fit)
        if validate:
            errors = validate_files(staging, graphs, VALIDATION_RTOL[dtype])
            logger.info("validated against PyTorch: %s", errors)
    return out_dir
