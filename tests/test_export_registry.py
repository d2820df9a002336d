"""The export family registry, the exporters' module names, the one method <-> manifest entry conversion, and
the progress bars of an export."""

import importlib.util
import io
import json
import shutil
import sys

import pytest

import graphprune as gp
from graphprune import optimized  # noqa: E402
from graphprune.export.demo import demo
from graphprune.export.family import BUDGETS, ExportFamily, checked, export_families, export_family
from graphprune.export.progress import progress
from graphprune.methods import method_from_dict, method_to_dict
from graphprune.models import adapters
from graphprune.runtime import optimized_state
from graphprune.testing import llava_inputs, tiny_llava

from .helpers import BATCH

GRAPHS = ("vision", "embed", "prefill", "decode")


class _Terminal(io.StringIO):
    """What a terminal's stderr says of itself: tqdm shows its bars (``disable=None``) only there."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("method", "entry"),
    [
        (gp.FastV(k=3, keep=0.25, query="mean"), {"name": "FastV", "k": 3, "keep": 0.25, "query": "mean"}),
        (gp.CrossAttentionTrim(keep=0.3, select="topk"), {"name": "CrossAttentionTrim", "keep": 0.3, "select": "topk"}),
    ],
)
def test_a_method_and_its_manifest_entry_convert_both_ways(method, entry):
    assert method_to_dict(method) == entry
    assert json.loads(json.dumps(method_to_dict(method))) == entry
    assert method_from_dict(entry) == method and type(method_from_dict(entry)) is type(method)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (
            {"name": "Other", "keep": 0.5},
            r"graphprune method name must be one of \['CrossAttentionTrim', 'DART', 'FastV', 'PDrop'\]",
        ),
        ({"name": ["FastV"]}, "graphprune method name must be one of"),
        ({"name": "FastV", "k": 2, "ratio": 0.5}, r"graphprune's FastV takes k, keep, query; got also \['ratio'\]"),
        ({"name": "CrossAttentionTrim", "keep": "half"}, "keep must be a fraction in"),
    ],
)
def test_a_wrong_method_entry_is_one_clear_error(entry, match):
    with pytest.raises(ValueError, match=match) as raised:
        method_from_dict(entry)
    assert "\n" not in str(raised.value)


def test_no_module_of_the_export_package_is_named_like_a_function_it_exports():
    """``gp.export.onnx`` is the function, and no module ``graphprune.export.onnx`` hides behind it."""
    for name in gp.export.__all__:
        assert importlib.util.find_spec(f"graphprune.export.{name}") is None, name
    assert gp.export.onnx.__module__ == "graphprune.export.onnx_export"
    assert gp.export.tensorrt.__module__ == "graphprune.export.tensorrt_export"


def test_every_exportable_family_is_the_export_class_of_a_family_folder():
    names = {adapter.name for adapter in adapters()}
    assert sorted(export_families()) == [
        "idefics3",
        "internvl",
        "llava",
        "llava-next",
        "llava-onevision",
        "mllama",
        "qwen2-vl",
        "qwen3-vl",
        "video-llava",
    ]
    for name, family in export_families().items():
        assert issubclass(family, ExportFamily) and family.name == name and name in names
        assert family.budget in BUDGETS and {"embed", "prefill", "decode"} <= set(family.graphs)
        assert family.__module__ == f"graphprune.families.{name.replace('-', '_')}.export"


@pytest.fixture
def probe_family(monkeypatch):
    """A family exportable for the test's duration, as a new family folder's record with ``export`` makes one."""

    class ProbeExport(ExportFamily):
        name, graphs, budget = "probe", ("embed", "prefill", "decode"), "max_visual_tokens"

    monkeypatch.setitem(export_families(), "probe", checked(ProbeExport))
    return ProbeExport


def test_the_unsupported_family_error_lists_every_registered_family(probe_family):
    assert export_family("probe", "unused") is probe_family
    with pytest.raises(gp.UnsupportedModelError) as raised:
        export_family("other", "graphprune cannot export OtherForConditionalGeneration (other) yet")
    assert str(raised.value) == (
        "graphprune cannot export OtherForConditionalGeneration (other) yet; "
        "exportable families: idefics3, internvl, llava, llava-next, llava-onevision, mllama, probe, qwen2-vl, "
        "qwen3-vl, video-llava"
    )


def test_an_export_family_needs_a_known_budget_keyword():
    class Wrong(ExportFamily):
        name, budget = "wrong", "max_tiles"

    with pytest.raises(ValueError, match=r"graphprune export family 'wrong': budget must be one of \('max_images'"):
        checked(Wrong)


def test_no_progress_bar_where_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert [graph.name for graph in progress([type("G", (), {"name": "prefill"})()], "step")] == ["prefill"]
    assert sys.stderr.getvalue() == ""


@pytest.fixture(scope="module")
def exported_on_a_terminal(tmp_path_factory):
    """A LLaVA export written while stderr is a terminal, and what it showed there."""
    pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed: pip install graphprune[onnx]")
    model = tiny_llava(num_layers=2, seed=2)
    with optimized(model, gp.FastV(k=1, keep=0.5)), pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "stderr", _Terminal())
        folder = gp.export.onnx(
            model, tmp_path_factory.mktemp("export") / "llava", example_inputs=llava_inputs(model, BATCH)
        )
        return folder, sys.stderr.getvalue()


@pytest.mark.slow
def test_an_export_shows_a_bar_per_graph_written_and_validated(exported_on_a_terminal):
    _, shown = exported_on_a_terminal
    for step in ("graphprune: ONNX export", "graphprune: validation against PyTorch"):
        lines = [line for line in shown.replace("\r", "\n").splitlines() if line.startswith(step)]
        assert any(f"{len(GRAPHS)}/{len(GRAPHS)}" in line for line in lines), step
        named = [graph for graph in GRAPHS if any(line.rstrip().endswith(f", {graph}]") for line in lines)]
        assert named == list(GRAPHS), step


@pytest.mark.slow
def test_ort_generator_refuses_an_export_of_an_unregistered_family(exported_on_a_terminal, tmp_path):
    folder = shutil.copytree(exported_on_a_terminal[0], tmp_path / "copy")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"family": "other"}))
    with pytest.raises(gp.UnsupportedModelError) as raised:
        gp.export.OrtGenerator(folder)
    assert str(raised.value) == (
        f"graphprune's OrtGenerator cannot run {folder}: it holds 'other'; "
        "exportable families: idefics3, internvl, llava, llava-next, llava-onevision, mllama, qwen2-vl, qwen3-vl, "
        "video-llava"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("llava", "llava"),
        ("llava-next", "llava-next"),
        ("llava-onevision", "llava-onevision"),
        ("qwen2.5-vl", "qwen2-vl"),
        ("mllama", "mllama"),
        ("smolvlm", "idefics3"),
        ("qwen3-vl", "qwen3-vl"),
    ],
)
def test_a_demo_name_builds_its_family_s_model_optimised_with_inputs(name, family):
    method = gp.CrossAttentionTrim(keep=0.5, select="topk") if family == "mllama" else gp.FastV(k=2, keep=0.5)
    model, inputs = export_families()[family].demo(method, name)
    state = optimized_state(model)
    assert state.adapter.name == family and state.method == method
    assert name != "qwen2.5-vl" or type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert name != "smolvlm" or type(model).__name__ == "SmolVLMForConditionalGeneration"
    assert inputs["input_ids"].shape[0] == 2 and inputs["attention_mask"].shape == inputs["input_ids"].shape


def test_an_unknown_demo_name_lists_the_demo_models(tmp_path):
    with pytest.raises(ValueError) as raised:
        demo(tmp_path / "out", "onnx", gp.FastV(), "llava-9")
    assert str(raised.value) == (
        "graphprune has no demo model 'llava-9'; demo models: idefics3, internvl, llava, llava-next, llava-onevision, "
        "mllama, qwen2-vl, qwen2.5-vl, qwen3-vl, smolvlm, video-llava"
    )
    assert list(tmp_path.iterdir()) == []
