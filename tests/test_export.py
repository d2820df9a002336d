"""Export: ONNX files run in ONNX Runtime give what the optimised PyTorch model gives; TensorRT readiness; bad input."""

import importlib
import importlib.util
import json
import sys

import pytest
import torch

pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
import onnx  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune import optimized  # noqa: E402
from graphprune.export.trt_profiles import trt_profiles  # noqa: E402
from graphprune.testing import llava_inputs, mllama_inputs, tiny_llava, tiny_mllama  # noqa: E402

from .helpers import BATCH, LOGITS_RTOL, export_fixtures, rel_error, unmodified_generate  # noqa: E402
from .onnx_graph import assert_profiles_ordered, node_types, top_k_constants  # noqa: E402

export_onnx = importlib.import_module("graphprune.export.onnx_export")  # the module of gp.export.onnx

METHOD = gp.FastV(k=1, keep=0.5)
GRAPHS = ("vision", "embed", "prefill", "decode")
TRIM = gp.CrossAttentionTrim(keep=0.5, select="topk")
MLLAMA_GRAPHS = ("vision", "masks", "embed", "prefill", "decode")
# (text_before, tiles per image, text_after): left-padded, different tile counts, two image slots
MLLAMA_EXPORT_BATCH = [(1, [4, 2], 3), (2, [2], 4), (0, [1], 6)]


# Tiny LLaVA with 2 layers (16 visual tokens per image; layer 1 pruned); BATCH: samples with 1, 2 and 0 images
model, inputs, exported = export_fixtures(
    lambda: tiny_llava(num_layers=2, seed=2),
    METHOD,
    lambda model: llava_inputs(model, BATCH),
    "llava",
    share="tiny-llava-fastv",
)


def test_export_writes_the_graphs_and_a_manifest(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert sorted(path.name for path in exported.iterdir()) == sorted(
        [f"{graph}.onnx" for graph in GRAPHS] + ["weights.bin", "manifest.json", "TENSORRT.md", "build_engines.sh"]
    )
    assert manifest["weights"] == "weights.bin"
    assert manifest["method"] == {"name": "FastV", "k": 1, "keep": 0.5, "query": "last"}
    assert manifest["visual_budget"] == {"tokens_per_image": 16, "max_images": 2, "max_visual": 32, "top_k": 16}
    assert (manifest["dtype"], manifest["opset"], manifest["graphprune_version"]) == ("float32", 18, gp.__version__)
    prefill, decode = manifest["graphs"]["prefill"], manifest["graphs"]["decode"]
    assert prefill["dynamic_axes"]["inputs_embeds"] == {"0": "batch", "1": "sequence"}
    assert prefill["dynamic_axes"]["graphprune_slots"] == {"0": "pruned_sequence"}
    # layer 0 caches every position, the pruned layer 1 only the kept ones
    assert prefill["dynamic_axes"]["present.0.key"]["2"] == "sequence"
    assert prefill["dynamic_axes"]["present.1.key"]["2"] == "pruned_sequence"
    assert decode["dynamic_axes"]["past.0.value"]["2"] == "past"
    assert decode["dynamic_axes"]["past.1.value"]["2"] == "pruned_past"
    assert [spec["name"] for spec in decode["inputs"]][-2:] == ["graphprune_cache_index", "graphprune_cache_valid"]


def test_pruning_lives_inside_the_prefill_graph_with_a_constant_k(exported):
    assert top_k_constants(exported) == [[16]]  # ceil(0.5 * 32), the visual budget: no Shape feeds K
    assert "ScatterElements" in node_types(exported, "prefill")
    assert "TopK" not in node_types(exported, "decode")


def test_every_graph_is_accepted_by_the_tensorrt_parser_rules(exported):
    for graph in GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(exported / f"{graph}.onnx"))) == [], graph


def test_the_tensorrt_rules_refuse_a_dynamic_or_unsorted_top_k():
    helper = onnx.helper
    nodes = [
        helper.make_node("Shape", ["x"], ["k"], start=1),
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], sorted=0),
        helper.make_node("Unique", ["x"], ["unique"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in ("values", "unique")],
    )
    problems = gp.export.tensorrt_support(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    assert any("must be a constant" in problem for problem in problems)
    assert any("sorted must be 1" in problem for problem in problems)
    assert any("Unique is not supported" in problem for problem in problems)


def test_ort_greedy_tokens_equal_pytorch(model, inputs, exported):
    expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    generator = gp.export.OrtGenerator(exported)
    assert torch.equal(generator.generate(**inputs, max_new_tokens=6), expected)


def test_ort_prefill_logits_match_pytorch(model, inputs, exported):
    out = model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True)
    logits = gp.export.OrtGenerator(exported).prefill_logits(**inputs)
    assert rel_error(logits, out.logits[0]) <= LOGITS_RTOL


def test_prefill_inputs_run_the_prefill_graph_alone(inputs, exported):
    """``prefill_inputs`` gives exactly what prefill.onnx takes (benchmarks time that graph alone)."""
    generator = gp.export.OrtGenerator(exported)
    values = generator.prefill_inputs(**inputs)
    session = generator.sessions["prefill"]
    assert list(values) == [spec.name for spec in session.get_inputs()]
    assert values["graphprune_visual_mask"].sum(-1).tolist() == [16, 32, 0]
    (logits,) = session.run(["logits"], values)
    assert torch.equal(torch.from_numpy(logits), generator.prefill_logits(**inputs))


def test_other_batch_shapes_run_on_the_same_export(model, exported):
    """Batch size, lengths and image counts other than the example's: the axes are dynamic, the budget holds."""
    for samples in ([(3, 2, 9)], [(1, 1, 2), (7, 1, 1), (2, 0, 5), (4, 2, 2)]):
        inputs = llava_inputs(model, samples, seed=5)
        expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert torch.equal(gp.export.OrtGenerator(exported).generate(**inputs, max_new_tokens=4), expected)


def test_more_images_than_the_budget_is_a_clear_error(model, exported):
    inputs = llava_inputs(model, [(2, 3, 2)])
    with pytest.raises(ValueError, match="at most 32 .*max_images"):
        gp.export.OrtGenerator(exported).generate(**inputs, max_new_tokens=2)


def test_the_tensorrt_recipe_builds_every_graph_in_fp16_with_consistent_profiles(exported):
    script = (exported / "build_engines.sh").read_text()
    assert script.count("--fp16") == len(GRAPHS) and script.count("--minShapes=") == len(GRAPHS)
    assert "--onnx=prefill.onnx" in script and "graphprune_slots:1" in script
    manifest = gp.export.Manifest.read(exported)
    profiles = trt_profiles(manifest)
    low, opt, high = profiles["decode"]["attention_mask"]
    past = profiles["decode"]["past.0.key"]
    assert [shape[1] for shape in (low, opt, high)] == [shape[2] + 1 for shape in past]  # total = past + 1
    sequence, pruned = profiles["prefill"]["inputs_embeds"], profiles["prefill"]["graphprune_slots"]
    assert all(p[0] <= s[1] for p, s in zip(pruned, sequence, strict=True))
    for max_text, max_new_tokens in ((512, 256), (8, 1)):  # a short prompt limit caps the opt prompt too
        assert_profiles_ordered(trt_profiles(manifest, max_text=max_text, max_new_tokens=max_new_tokens))
    assert "Jetson Orin" in (exported / "TENSORRT.md").read_text()


def test_existing_folder_needs_overwrite(model, inputs, exported):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        gp.export.onnx(model, exported, example_inputs=inputs)


def test_unoptimized_or_unsupported_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not optimized by graphprune"):
        gp.export.onnx(tiny_llava(num_layers=2), tmp_path / "out", example_inputs={})
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_no_folder(model, inputs, tmp_path, monkeypatch):
    write = export_onnx._write

    def write_then_fail(graph, folder, *rest):
        if graph.name == "prefill":
            raise RuntimeError("disk full")
        return write(graph, folder, *rest)

    monkeypatch.setattr(export_onnx, "_write", write_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        gp.export.onnx(model, tmp_path / "out", example_inputs=inputs)
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_names_the_extra(model, inputs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import onnxruntime` meets when it is not installed
    with pytest.raises(ImportError, match=r"pip install graphprune\[onnx\]"):
        gp.export.onnx(model, tmp_path / "out", example_inputs=inputs)
    with pytest.raises(ImportError, match=r"pip install graphprune\[onnx\]"):
        gp.export.OrtGenerator(tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None, reason="torch-tensorrt is installed")
def test_tensorrt_without_torch_tensorrt_names_the_extra(model, inputs, tmp_path):
    with pytest.raises(ImportError, match=r"pip install graphprune\[tensorrt\]"):
        gp.export.tensorrt(model, tmp_path / "trt", example_inputs=inputs)


@pytest.mark.skipif(
    importlib.util.find_spec("torch_tensorrt") is None or not torch.cuda.is_available(),
    reason="needs torch-tensorrt and a CUDA GPU",
)
def test_tensorrt_export_compiles_every_graph(inputs, tmp_path):
    model = tiny_llava(num_layers=2, seed=2)
    with optimized(model, METHOD):
        folder = gp.export.tensorrt(model, tmp_path / "trt", example_inputs=inputs)
    assert sorted(path.name for path in folder.glob("*.ep")) == sorted(f"{graph}.ep" for graph in GRAPHS)
    assert gp.export.Manifest.read(folder).format == "torch_tensorrt"


@pytest.mark.slow
def test_unpruned_export_is_the_baseline_with_the_same_tokens(model, inputs, tmp_path):
    folder = gp.export.onnx(model, tmp_path / "unpruned", example_inputs=inputs, prune=False)
    manifest = gp.export.Manifest.read(folder)
    assert manifest.method is None and "TopK" not in node_types(folder, "prefill")
    expected = unmodified_generate(model, METHOD, inputs, max_new_tokens=4)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**inputs, max_new_tokens=4), expected)
    right_padded = {**inputs, "attention_mask": inputs["attention_mask"].flip(-1)}  # padding after the tokens
    with pytest.raises(ValueError, match="graphprune does not prune right-padded batches"):
        gp.export.OrtGenerator(folder).generate(**right_padded, max_new_tokens=1)


# Tiny Mllama, 4 layers, cross-attention at 1 (ranks, keeps all features) and 3 (trimmed)
mllama_model, mllama_batch, mllama_exported = export_fixtures(
    lambda: tiny_mllama(num_layers=4, cross_attention_layers=(1, 3)),
    TRIM,
    lambda model: mllama_inputs(model, MLLAMA_EXPORT_BATCH),
    "mllama",
    names=("mllama_model", "mllama_batch", "mllama_exported"),
)


@pytest.mark.slow
def test_mllama_export_trims_inside_the_prefill_graph_with_a_constant_k(mllama_exported):
    manifest = gp.export.Manifest.read(mllama_exported)
    assert sorted(manifest.graphs) == sorted(MLLAMA_GRAPHS)
    assert manifest.method == {"name": "CrossAttentionTrim", "keep": 0.5, "select": "topk"}
    # 2 image slots x 4 tiles x 17 features; K = ceil(0.5 * 136)
    assert manifest.visual_budget == {
        "max_num_tiles": 4,
        "features_per_tile": 17,
        "max_images": 2,
        "max_features": 136,
        "top_k": 68,
    }
    assert manifest.first_pruned_layer == 3
    prefill, decode = manifest.graphs["prefill"], manifest.graphs["decode"]
    assert prefill["dynamic_axes"]["cross_attention_states"] == {"0": "batch", "1": "features"}
    assert "trimmed_features" in prefill["dynamic_axes"]["present.3.key"]["2"]
    assert decode["dynamic_axes"]["past.1.value"]["2"] == "features"  # the first cross layer keeps all F
    assert decode["dynamic_axes"]["past.3.value"]["2"] == "trimmed_features"
    assert top_k_constants(mllama_exported) == [[68]]
    assert "TopK" not in node_types(mllama_exported, "decode")


@pytest.mark.slow
def test_mllama_graphs_are_accepted_by_the_tensorrt_parser_rules(mllama_exported):
    for graph in MLLAMA_GRAPHS:
        assert gp.export.tensorrt_support(onnx.load(str(mllama_exported / f"{graph}.onnx"))) == [], graph
    assert "--onnx=masks.onnx" in (mllama_exported / "build_engines.sh").read_text()
    manifest = gp.export.Manifest.read(mllama_exported)
    for max_text, max_new_tokens in ((512, 256), (8, 1)):
        assert_profiles_ordered(trt_profiles(manifest, max_text=max_text, max_new_tokens=max_new_tokens))


@pytest.mark.slow
def test_mllama_ort_greedy_tokens_equal_pytorch(mllama_model, mllama_batch, mllama_exported):
    expected = mllama_model.generate(**mllama_batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(gp.export.OrtGenerator(mllama_exported).generate(**mllama_batch, max_new_tokens=6), expected)


@pytest.mark.slow
def test_mllama_ort_prefill_logits_match_pytorch(mllama_model, mllama_batch, mllama_exported):
    out = mllama_model.generate(
        **mllama_batch, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    logits = gp.export.OrtGenerator(mllama_exported).prefill_logits(**mllama_batch)
    assert rel_error(logits, out.logits[0]) <= LOGITS_RTOL


@pytest.mark.slow
def test_mllama_other_batch_shapes_run_on_the_same_export(mllama_model, mllama_exported):
    """One image slot, batch 1, a sample without an image: the axes are dynamic, the budget holds."""
    for samples in ([(3, [3], 9)], [(1, [1], 2), (7, [2, 4], 1), (2, [], 5), (4, [4], 2)]):
        inputs = mllama_inputs(mllama_model, samples, seed=5)
        expected = mllama_model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert torch.equal(gp.export.OrtGenerator(mllama_exported).generate(**inputs, max_new_tokens=4), expected)


@pytest.mark.slow
def test_mllama_more_images_than_the_budget_or_no_image_is_a_clear_error(mllama_model, mllama_exported):
    generator = gp.export.OrtGenerator(mllama_exported)
    with pytest.raises(ValueError, match="at most 2: export again with a larger max_images"):
        generator.generate(**mllama_inputs(mllama_model, [(1, [1, 1, 1], 2)]), max_new_tokens=2)
    with pytest.raises(ValueError, match="runs prompts with images"):
        generator.generate(**mllama_inputs(mllama_model, [(4, [], 2)]), max_new_tokens=2)


@pytest.mark.slow
def test_head_union_export_is_refused_and_says_what_to_use(tmp_path):
    model = tiny_mllama(num_layers=4, cross_attention_layers=(1, 3))
    inputs = mllama_inputs(model, MLLAMA_EXPORT_BATCH)
    with optimized(model, gp.CrossAttentionTrim(keep=0.25)), pytest.raises(ValueError) as error:
        gp.export.onnx(model, tmp_path / "out", example_inputs=inputs)
    assert "select='head_union'" in str(error.value) and "select='topk'" in str(error.value)
    assert "data-dependent" in str(error.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_mllama_unpruned_export_is_the_baseline_with_the_same_tokens(mllama_model, mllama_batch, tmp_path):
    folder = gp.export.onnx(mllama_model, tmp_path / "unpruned", example_inputs=mllama_batch, prune=False)
    assert gp.export.Manifest.read(folder).method is None and "TopK" not in node_types(folder, "prefill")
    expected = unmodified_generate(mllama_model, TRIM, mllama_batch, max_new_tokens=4)
    assert torch.equal(gp.export.OrtGenerator(folder).generate(**mllama_batch, max_new_tokens=4), expected)
