"""Reading exported ONNX files in tests: operator types and TopK's constant K."""

from pathlib import Path

import onnx


def node_types(folder: Path, graph: str) -> list[str]:
    return [node.op_type for node in onnx.load(str(folder / f"{graph}.onnx")).graph.node]


def top_k_constants(folder: Path) -> list[list[int]]:
    """K of every TopK in ``prefill.onnx``; a K that is not a constant (an initializer or Constant node) fails."""
    graph = onnx.load(str(folder / "prefill.onnx")).graph
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    constants |= {
        node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t)
        for node in graph.node
        if node.op_type == "Constant"
    }
    return [constants[node.input[1]].tolist() for node in graph.node if node.op_type == "TopK"]


def assert_profiles_ordered(profiles: dict) -> None:
    """Every TensorRT profile has min <= opt <= max on every axis (trtexec refuses anything else)."""
    for graph, inputs in profiles.items():
        for name, (low, opt, high) in inputs.items():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)), (graph, name, low, opt, high)
