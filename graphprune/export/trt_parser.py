"""What TensorRT 10's ONNX parser accepts, checked on an ONNX graph before it reaches a Jetson.

Operators: the "Y" rows of onnx-tensorrt's ``docs/operators.md`` (github.com/onnx/onnx-tensorrt,
commit 6d0ab7be, the TensorRT 8.5 table; TensorRT 10's parser keeps them and takes opsets 9 to 20),
plus ``LayerNormalization``, which TensorRT imports natively since 8.6 (its release notes: "target
... opset 17 for LayerNormalization", quoted in NVIDIA/TensorRT#3657). Restrictions from the same
table: TopK's K, CumSum's axis, Slice's and Squeeze's/Unsqueeze's axes must be constants; TopK
also needs ``sorted=1`` and K below 3840 (TensorRT's TopK limit). Per-operator data types are not
checked here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

MAX_OPSET = 20
MAX_TOP_K = 3840
SUPPORTED = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GRU",
        "HardSwish",
        "HardSigmoid",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)
# operator -> the input that must be a constant
CONSTANT_INPUTS = {"TopK": 1, "CumSum": 1, "Slice": 3, "Squeeze": 1, "Unsqueeze": 1}


def _constants(graph: onnx.GraphProto) -> dict:
    import onnx
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(onnx.helper.get_attribute_value(node.attribute[0]))
    return values


def tensorrt_support(model: onnx.ModelProto) -> list[str]:
    """The reasons TensorRT 10's ONNX parser would refuse ``model``; empty when it takes every node."""
    import onnx

    problems = []
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if opset is None or opset > MAX_OPSET:
        problems.append(f"opset {opset}: TensorRT 10 parses opsets 9 to {MAX_OPSET}")
    if model.functions:
        problems.append(f"local functions {[f.name for f in model.functions]}: inline them")
    constants = _constants(model.graph)
    for node in model.graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED:
            problems.append(f"{where}: operator {node.domain or 'ai.onnx'}.{node.op_type} is not supported")
            continue
        position = CONSTANT_INPUTS.get(node.op_type)
        given = position is not None and len(node.input) > position and node.input[position]
        if given and node.input[position] not in constants:
            problems.append(f"{where}: input {position} ({node.input[position]}) must be a constant")
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "TopK":
            if attributes.get("sorted", 1) != 1:
                problems.append(f"{where}: sorted must be 1")
            k = constants.get(node.input[1])
            if k is not None and int(k.max()) >= MAX_TOP_K:
                problems.append(f"{where}: K={int(k.max())} must be below {MAX_TOP_K}")
        if node.op_type == "Cast" and attributes.get("to") == onnx.TensorProto.DOUBLE:
            problems.append(f"{where}: casts to float64")
    return problems
