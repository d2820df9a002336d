"""What a TensorRT version's ONNX parser accepts, checked on an ONNX graph before it reaches a Jetson.

The rules are onnx-tensorrt's operator tables, kept as data in ``trt_tables`` (sources and commits
there): per version, the opsets, the operators and the data types each accepts, and the restrictions
a graph shows (inputs that must be constants, attribute values, TopK's K below 3840, outputs that
must stay unused). A node's data types are those of its inputs and outputs that carry the operator's
value type (the ONNX schema's type constraint that admits floats: ``Gather``'s data, not its indices).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from .trt_tables import DEFAULT, TABLES

if TYPE_CHECKING:
    import onnx

FP8 = ("FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ")
TYPE_NAMES = {"FLOAT": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16", "FLOAT4E2M1": "FP4"} | dict.fromkeys(FP8, "FP8")


def check_version(trt_version: str) -> dict:
    """The table of ``trt_version``; ValueError naming the accepted versions otherwise."""
    if trt_version not in TABLES:
        accepted = ", ".join(f"{version!r} ({table['jetpack']})" for version, table in TABLES.items())
        raise ValueError(f"graphprune knows TensorRT {accepted}; got trt_version={trt_version!r}")
    return TABLES[trt_version]


def _constants(graph: onnx.GraphProto) -> tuple[set, dict]:
    """The names of the graph's constants, and the values of those stored inline (K of a TopK)."""
    import onnx
    from onnx import numpy_helper

    inline = [init for init in graph.initializer if init.data_location != onnx.TensorProto.EXTERNAL]
    values = {init.name: numpy_helper.to_array(init) for init in inline}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return {init.name for init in graph.initializer} | set(values), values


def _types(model: onnx.ModelProto) -> dict:
    """Every value's element type (onnx.TensorProto's enum), with ONNX's shape inference where the graph lacks one."""
    import onnx

    def known(graph):
        infos = [*graph.input, *graph.output, *graph.value_info]
        types = {info.name: info.type.tensor_type.elem_type for info in infos if info.type.tensor_type.elem_type}
        types |= {init.name: init.data_type for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute[0].name == "value":
                types[node.output[0]] = node.attribute[0].t.data_type
        return types

    types = known(model.graph)
    if any(name and name not in types for node in model.graph.node for name in node.output):
        with contextlib.suppress(Exception):  # a model ONNX cannot infer (over 2 GiB) keeps the types it states
            types |= known(onnx.shape_inference.infer_shapes(model).graph)
    return types


def _value_positions(node: onnx.NodeProto, opset: int) -> tuple[list[int], list[int]]:
    """The inputs and outputs of ``node`` that carry its value type (a type constraint admitting float)."""
    from onnx import defs

    try:
        schema = defs.get_schema(node.op_type, opset, node.domain)
    except defs.SchemaError:
        return list(range(len(node.input))), list(range(len(node.output)))
    valued = {c.type_param_str for c in schema.type_constraints if "tensor(float)" in c.allowed_type_strs}

    def positions(formal, actual):
        last = len(formal) - 1
        return [i for i in range(len(actual)) if formal and formal[min(i, last)].type_str in valued]

    return positions(schema.inputs, node.input), positions(schema.outputs, node.output)


def tensorrt_support(model: onnx.ModelProto, trt_version: str = DEFAULT) -> list[str]:
    """The reasons TensorRT ``trt_version``'s ONNX parser would refuse ``model`` (default ``"10.3"``, JetPack 6;
    ``"10.15"``: JetPack 7; ``"8.5"``: JetPack 5); empty when it takes every node. Each names the node."""
    import onnx

    table = check_version(trt_version)
    low, high = table["opsets"]
    problems = []
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if opset is None or not low <= opset <= high:
        problems.append(f"opset {opset}: TensorRT {trt_version} parses opsets {low} to {high}")
    if model.functions:
        problems.append(f"local functions {[f.name for f in model.functions]}: inline them")
    names, values = _constants(model.graph)
    types = _types(model)
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in table["operators"]:
            problems.append(f"{where}: operator {node.domain or 'ai.onnx'}.{node.op_type} is not supported")
            continue
        accepted = table["operators"][node.op_type].split()
        inputs, outputs = _value_positions(node, opset or high)
        tensors = [node.input[i] for i in inputs] + [node.output[i] for i in outputs]
        refused = {}  # data type -> the tensors of the node that have it
        for name in dict.fromkeys(name for name in tensors if name in types):
            onnx_type = onnx.TensorProto.DataType.Name(types[name])
            kind = TYPE_NAMES.get(onnx_type, onnx_type)
            if table["cast_down"].get(kind, kind) not in accepted:
                refused.setdefault(kind, []).append(name)
        if refused:
            kinds = ", ".join(f"{kind} ({', '.join(names)})" for kind, names in refused.items())
            problems.append(f"{where}: data type {kinds}; TensorRT {trt_version} takes {', '.join(accepted)}")
        position, input_name = table["constant_inputs"].get(node.op_type, (None, None))
        given = node.input[position] if position is not None and len(node.input) > position else ""
        if given and given not in names:
            problems.append(f"{where}: input {input_name} ({given}) must be a constant")
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for attribute, value in table["attributes"].get(node.op_type, {}).items():
            given = attributes.get(attribute, value)
            if (given.decode() if isinstance(given, bytes) else given) != value:
                problems.append(f"{where}: {attribute} must be {value!r}")
        if node.op_type in table["first_output_only"] and any(node.output[1:]):
            problems.append(f"{where}: only its first output is supported")
        if node.op_type == "TopK":
            k, most = values.get(node.input[1]), table["max_top_k"]
            if node.input[1] not in names and position is None:
                problems.append(f"{where}: K ({node.input[1]}) must be a constant, to be checked below {most}")
            if k is not None and int(k.max()) >= most:
                problems.append(f"{where}: K={int(k.max())} must be below {most}")
        if node.op_type == "Cast" and attributes.get("to") == onnx.TensorProto.DOUBLE:
            problems.append(f"{where}: casts to float64")
    return problems


class TensorRTSupportError(ValueError):
    """An exported graph holds what the chosen TensorRT version's ONNX parser refuses."""


def export_fit(folder: Path, files: dict[str, str]) -> dict[str, dict[str, list[str]]]:
    """``{version: {graph: problems}}`` for the exported ``files`` (``{graph: file name}``) in ``folder``,
    for every TensorRT version graphprune knows (weights are not read)."""
    import onnx

    models = {graph: onnx.load(str(folder / file), load_external_data=False) for graph, file in files.items()}
    return {version: {graph: tensorrt_support(m, version) for graph, m in models.items()} for version in TABLES}


def require_fit(fit: dict[str, dict[str, list[str]]], files: dict[str, str], trt_version: str) -> None:
    """TensorRTSupportError (one line, naming the file and node) if ``trt_version`` refuses a graph of ``fit``."""
    problems = [f"{files[graph]}: {problem}" for graph, found in fit[trt_version].items() for problem in found]
    if problems:
        others = [version for version in TABLES if version != trt_version and not any(fit[version].values())]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise TensorRTSupportError(
            f"graphprune: TensorRT {trt_version} ({TABLES[trt_version]['jetpack']}) would refuse this export: "
            f"{problems[0]}{more}; versions that take it: {others or 'none'}; trt_version=None skips the check"
        )
