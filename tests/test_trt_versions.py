"""TensorRT parser rules per version (8.5: JetPack 5, 10.3: JetPack 6, 10.15: JetPack 7): operators, data types,
the export's check and TENSORRT.md's JetPack and size sections."""

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.cli import main  # noqa: E402
from graphprune.export.jetson import PARAMETERS_7B  # noqa: E402
from graphprune.export.trt_parser import TensorRTSupportError, export_fit, require_fit  # noqa: E402
from graphprune.export.trt_tables import TABLES  # noqa: E402
from graphprune.testing import llava_inputs, tiny_llava  # noqa: E402

from .helpers import BATCH, export_fixtures  # noqa: E402

GRAPHS = ("vision", "embed", "prefill", "decode")
model, inputs, exported = export_fixtures(
    lambda: tiny_llava(num_layers=2, seed=2),
    gp.FastV(k=1, keep=0.5),
    lambda m: llava_inputs(m, BATCH),
    "llava",
    share="tiny-llava-fastv",
)


def _model(nodes, inputs, outputs, opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _info(name, dtype, shape=(2, 5)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_cumsum_and_clip_on_int64_are_refused_by_tensorrt_10_with_the_node_name():
    """CumSum and Clip take floats only in TensorRT 10's table (graphprune's graphs used to count in int64)."""
    axis = helper.make_tensor("axis", TensorProto.INT64, [], [1])
    nodes = [
        helper.make_node("CumSum", ["x", "axis"], ["counts"], name="running_count"),
        helper.make_node("Clip", ["counts"], ["clipped"], name="clamped"),
    ]
    model = _model(nodes, [_info("x", TensorProto.INT64)], [_info("clipped", TensorProto.INT64)])
    model.graph.initializer.append(axis)
    problems = gp.export.tensorrt_support(model, "10.3")
    assert any(p.startswith("CumSum node 'running_count': data type INT64 (x, counts)") for p in problems), problems
    assert any(p.startswith("Clip node 'clamped'") and "takes FP32, FP16, BF16" in p for p in problems), problems
    assert gp.export.tensorrt_support(model) == problems  # 10.3 is the default
    floats = _model(nodes, [_info("x", TensorProto.FLOAT)], [_info("clipped", TensorProto.FLOAT)])
    floats.graph.initializer.append(axis)
    assert gp.export.tensorrt_support(floats, "10.3") == []


def test_each_version_has_its_own_table():
    """INT8 Relu: 8.5 takes it, 10.x only as a quantized type; BF16 MatMul and LayerNormalization: 10.x only;
    Gather's INT64 indices are not its value type; an operator no table has is refused by every version."""
    int8 = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_info("x", TensorProto.INT8)], [])
    assert gp.export.tensorrt_support(int8, "8.5") == ["opset 18: TensorRT 8.5 parses opsets 7 to 17"]
    assert gp.export.tensorrt_support(int8, "10.3") == [
        "Relu node 'r': data type INT8 (x, y); TensorRT 10.3 takes FP32, FP16, BF16, INT32, INT64"
    ]
    bf16 = _model(
        [
            helper.make_node("MatMul", ["x", "x"], ["m"], name="mm"),
            helper.make_node("LayerNormalization", ["m", "s"], ["y"], name="ln"),
            helper.make_node("Gather", ["y", "i"], ["z"], name="g"),
            helper.make_node("Unique", ["z"], ["u"], name="u"),
        ],
        [
            _info("x", TensorProto.BFLOAT16, (5, 5)),
            _info("s", TensorProto.BFLOAT16, (5,)),
            _info("i", TensorProto.INT64, (2,)),
        ],
        [],
        opset=17,
    )
    assert gp.export.tensorrt_support(bf16, "8.5") == [
        "MatMul node 'mm': data type BF16 (x, m); TensorRT 8.5 takes FP32, FP16",
        "LayerNormalization node 'ln': operator ai.onnx.LayerNormalization is not supported",
        "Gather node 'g': data type BF16 (y, z); TensorRT 8.5 takes FP32, FP16, INT8, INT32, BOOL",
        "Unique node 'u': operator ai.onnx.Unique is not supported",
    ]
    unique = ["Unique node 'u': operator ai.onnx.Unique is not supported"]
    assert gp.export.tensorrt_support(bf16, "10.3") == gp.export.tensorrt_support(bf16, "10.15") == unique


def test_the_newest_table_takes_whatever_10_3_takes():
    """So every graph that passes 10.3 (every exported family: gp.export.onnx checks it) passes 10.15 too."""
    old, new = TABLES["10.3"], TABLES["10.15"]
    for op, types in old["operators"].items():
        assert set(types.split()) <= set(new["operators"][op].split()), op
    assert new["constant_inputs"].items() <= old["constant_inputs"].items()
    assert new["opsets"][0] <= old["opsets"][0] and new["opsets"][1] >= old["opsets"][1]


@pytest.mark.parametrize(
    "call", [lambda m: gp.export.tensorrt_support(m, "10"), lambda m: main(["export", "--trt", "9"])]
)
def test_an_unknown_version_is_refused_naming_the_accepted_ones(call, capsys):
    with pytest.raises((ValueError, SystemExit)) as error:
        call(_model([], [], []))
    message = str(error.value) if error.type is ValueError else capsys.readouterr().err
    assert message.count("\n") <= 1 and "graphprune" in message
    assert all(version in message for version in TABLES), message


@pytest.mark.slow
def test_the_export_passes_10_3_and_10_15_and_says_which_jetpack_it_fits(exported):
    files = {graph: f"{graph}.onnx" for graph in GRAPHS}
    fit = export_fit(exported, files)
    assert fit["10.3"] == fit["10.15"] == dict.fromkeys(GRAPHS, [])
    assert "LayerNormalization node" in " ".join(fit["8.5"]["vision"])  # CLIP's; TensorRT 8.5 has no importer
    with pytest.raises(TensorRTSupportError, match=r"^graphprune: TensorRT 8.5 \(JetPack 5\) would refuse this") as e:
        require_fit(fit, files, "8.5")
    assert "\n" not in str(e.value) and "'10.3', '10.15'" in str(e.value)
    guide = (exported / "TENSORRT.md").read_text()
    assert "| 10.3 | JetPack 6.1, 6.2 (TensorRT 10.3; Orin) | yes |" in guide
    assert "| 8.5 | JetPack 5.1.x (TensorRT 8.5.2; Orin, Xavier) | no, " in guide
    assert "| LLaVA-1.5-7B | 7.06 B | 14.1 GB | 28.3 GB | AGX Orin 32 GB, AGX Orin 64 GB | AGX Orin 64 GB |" in guide


@pytest.mark.slow
def test_export_with_trt_8_5_is_refused_and_writes_nothing(model, inputs, tmp_path):
    out = tmp_path / "jetpack5"
    with pytest.raises(
        TensorRTSupportError, match=r"vision\.onnx: opset 18: TensorRT 8\.5 parses opsets 7 to 17 \(and"
    ):
        gp.export.onnx(model, out, example_inputs=inputs, trt_version="8.5", validate=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="^graphprune knows TensorRT '8.5' .*got trt_version='11'"):
        gp.export.onnx(model, out, example_inputs=inputs, trt_version="11")


@pytest.mark.slow
def test_export_graphs_count_and_clamp_without_int64_cumsum_or_clip(exported):
    """The ranking and placement count in float32 and clamp with Max/Min (the int64 forms TensorRT 10 refuses)."""
    for graph in ("embed", "prefill"):
        proto = onnx.load(str(exported / f"{graph}.onnx"))
        assert "Clip" not in {node.op_type for node in proto.graph.node}, graph
        assert "CumSum" in {node.op_type for node in proto.graph.node}, graph


def test_sizes_at_7b_are_the_published_configs_parameter_counts():
    path = Path(__file__).parents[1] / "benchmarks" / "export_sizes.py"
    spec = importlib.util.spec_from_file_location("export_sizes", path)
    sizes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sizes)
    counted = []
    for cls, config in sizes.configs().values():
        with torch.device("meta"):
            counted.append(sum(p.numel() for p in cls(config).parameters()))
    assert counted == list(PARAMETERS_7B.values())
