"""float16 end to end: ``model.half()`` -> optimize -> ONNX -> ONNX Runtime (CPU) gives PyTorch's float16 tokens;
the graphs stay float16 except the ranking (float32); bfloat16 is refused; the TensorRT recipe builds them as typed."""

import json

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.runtime import optimized_state  # noqa: E402
from graphprune.testing import llava_inputs, qwen2_vl_inputs, tiny_llava, tiny_qwen2_vl  # noqa: E402

from .helpers import BATCH, export_fixtures  # noqa: E402

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "embed", "prefill", "decode")
QWEN_SAMPLES = [(3, [(8, 8)], [], 4), (2, [(4, 8)], [], 3)]  # 16 | 8 image tokens, left-padded

# every export is validated against PyTorch by export.onnx itself, at float16's tolerance
model, inputs, exported = export_fixtures(
    lambda: tiny_llava(num_layers=2, seed=2, dtype=torch.float16),
    METHOD,
    lambda model: llava_inputs(model, BATCH),
    "llava_fp16",
)
qwen, qwen_inputs, qwen_exported = export_fixtures(
    lambda: tiny_qwen2_vl(version="2", num_layers=2, dtype=torch.float16),
    METHOD,
    lambda model: qwen2_vl_inputs(model, QWEN_SAMPLES),
    "qwen2_vl_fp16",
    names=("qwen", "qwen_inputs", "qwen_exported"),
)


def _types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value of ``proto``'s graph."""
    proto = onnx.shape_inference.infer_shapes(proto)
    values = [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]
    return {value.name: value.type.tensor_type.elem_type for value in values} | {
        tensor.name: tensor.data_type for tensor in proto.graph.initializer
    }


def test_float16_graphs_rank_in_float32(exported):
    assert json.loads((exported / "manifest.json").read_text())["dtype"] == "float16"
    proto = onnx.load(str(exported / "prefill.onnx"))
    types = _types(proto)
    weights = [tensor for tensor in proto.graph.initializer if len(tensor.dims) == 2]
    assert weights and {tensor.data_type for tensor in weights} == {onnx.TensorProto.FLOAT16}
    assert types["inputs_embeds"] == types["logits"] == onnx.TensorProto.FLOAT16
    (top_k,) = [node for node in proto.graph.node if node.op_type == "TopK"]
    assert types[top_k.input[0]] == onnx.TensorProto.FLOAT  # the cut is found on float32 scores
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_onnx_runtime_tokens_equal_pytorch_float16_generate(request, family):
    names = ("model", "inputs", "exported") if family == "llava" else ("qwen", "qwen_inputs", "qwen_exported")
    model, inputs, exported = (request.getfixturevalue(name) for name in names)
    assert model.dtype == torch.float16
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(exported).generate(**inputs, max_new_tokens=4), expected)


def test_tensorrt_recipe_builds_the_float16_graphs_strongly_typed(exported):
    script = (exported / "build_engines.sh").read_text()
    assert script.count("--stronglyTyped") == len(GRAPHS) and "--fp16" not in script
    assert "float32" in (exported / "TENSORRT.md").read_text()  # the note on the ranking's precision


def test_bfloat16_export_is_refused_before_any_work(tmp_path):
    model = tiny_llava(num_layers=2, dtype=torch.bfloat16)
    with gp.optimized(model, METHOD):
        with pytest.raises(
            ValueError, match=r"^graphprune exports float32 or float16 .* not bfloat16 .*model\.half\(\)"
        ):
            gp.export.onnx(model, tmp_path / "out", example_inputs=llava_inputs(model, [(2, 1, 2)]))
        assert optimized_state(model).method == METHOD and model.dtype == torch.bfloat16
    assert not (tmp_path / "out").exists()
