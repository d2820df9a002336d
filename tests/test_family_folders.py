"""One folder per family (``graphprune/families/<name>/``): every folder's record is complete and resolves, every
registry lists exactly the folders' records, and a new folder is all it takes to add a family."""

from __future__ import annotations

import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import graphprune
from graphprune import tiny_checkpoints
from graphprune.export.family import ExportFamily, export_families
from graphprune.families import FAMILIES, Family, resolve
from graphprune.methods import METHODS
from graphprune.models import ModelAdapter, adapters, supported_classes
from graphprune.testing import ContractCase, family_modules

FOLDERS = sorted(path.parent.name for path in (Path(graphprune.__file__).parent / "families").glob("*/__init__.py"))
LAYERS = {"adapter", "testing", "layout", "export", "vllm", "checkpoint"}  # the modules a family folder may hold


def test_every_folder_has_one_record_and_the_records_are_the_folders():
    assert len(FOLDERS) == 10
    assert [family.adapter.partition(".adapter:")[0] for family in FAMILIES] == [
        f"graphprune.families.{folder}" for folder in FOLDERS
    ]
    assert all(isinstance(family, Family) for family in FAMILIES)
    assert len({family.name for family in FAMILIES}) == len(FAMILIES)


@pytest.mark.parametrize("folder", FOLDERS)
def test_a_folder_holds_its_layers_and_its_record_names_them(folder):
    family = next(family for family in FAMILIES if family.adapter.startswith(f"graphprune.families.{folder}."))
    modules = {path.stem for path in (Path(graphprune.__file__).parent / "families" / folder).glob("*.py")}
    assert modules - {"__init__"} <= LAYERS and {"adapter", "testing"} <= modules
    assert family.model_classes and family.methods and set(family.methods) <= set(METHODS)

    adapter = resolve(family.adapter)
    assert issubclass(adapter, ModelAdapter) and adapter.__module__ == f"graphprune.families.{folder}.adapter"
    testing = importlib.import_module(family.testing)
    assert testing.__all__ and all(hasattr(testing, name) for name in testing.__all__)
    assert set(testing.CONTRACT) <= set(family.model_classes)
    assert all(isinstance(case, ContractCase) for case in testing.CONTRACT.values())
    assert list(inspect.signature(resolve(family.plot_layout)).parameters) == ["model", "inputs"]
    if family.export:
        export = resolve(family.export)
        assert issubclass(export, ExportFamily) and export.name == family.name
        assert export.__module__ == f"graphprune.families.{folder}.export"
    else:
        assert family.export_refusal and "export" not in modules
    for hf_class, (vllm_name, target) in family.vllm.items():  # resolving them needs vLLM: tests/vllm do that
        assert hf_class in family.model_classes and vllm_name == f"Graphprune{hf_class}"
        assert target.startswith(f"graphprune.families.{folder}.vllm:")
        assert importlib.util.find_spec(target.partition(":")[0]) is not None
    assert set(family.vllm_refused) <= set(family.model_classes) - set(family.vllm)
    assert ("vllm" in modules) == bool(family.vllm)
    assert ("checkpoint" in modules) == bool(family.checkpoint)
    if family.checkpoint:
        checkpoint = importlib.import_module(family.checkpoint)
        assert checkpoint.__all__ and all(hasattr(checkpoint, name) for name in checkpoint.__all__)


def test_every_registry_lists_exactly_the_records():
    assert [adapter.family for adapter in adapters()] == list(FAMILIES)
    assert supported_classes() == sorted(name for family in FAMILIES for name in family.model_classes)
    assert sorted(export_families()) == sorted(family.name for family in FAMILIES if family.export)
    assert family_modules() == [importlib.import_module(family.testing) for family in FAMILIES]
    savers = [name for module in tiny_checkpoints.family_modules() for name in module.__all__]
    assert len(savers) == len(set(savers)) and all(getattr(tiny_checkpoints, name) for name in savers)


def test_a_record_refuses_a_reference_that_is_not_module_colon_attribute():
    with pytest.raises(ValueError, match=r"graphprune family 'x': 'x.adapter.Adapter' is not 'module:attribute'"):
        Family("x", ("X",), (), "x.adapter.Adapter", "x.testing", "x.layout:layouts")


PROBE = '''"""A test family: LLaVA's layers under another name and class."""

from ...methods import FastV
from ..record import Family

FAMILY = Family(
    name="probe",
    model_classes=("ProbeForConditionalGeneration",),
    methods=(FastV,),
    adapter="graphprune.families.llava.adapter:LlavaAdapter",
    testing=f"{__name__}.testing",
    plot_layout="graphprune.families.llava.layout:layouts",
    export="graphprune.families.probe.export:ProbeExport",
    vllm={"ProbeForConditionalGeneration": ("GraphpruneProbeForConditionalGeneration", f"{__name__}.vllm:Probe")},
)
'''
PROBE_EXPORT = """from ..llava.export import LlavaExport


class ProbeExport(LlavaExport):
    name, demo_names = "probe", ("probe",)
"""
PROBE_CHECK = """
import graphprune as gp
from graphprune.export.demo import demo_names
from graphprune.export.family import export_families
from graphprune.families import FAMILIES
from graphprune.models import adapters
from graphprune.plot import visual_layouts
from graphprune.testing import BATCH, llava_inputs, probe_inputs, tiny_llava

probe = next(family for family in FAMILIES if family.name == "probe")
assert "ProbeForConditionalGeneration" in gp.supported_classes()
assert [adapter.name for adapter in adapters()].count("probe") == 1
assert export_families()["probe"].name == "probe" and "probe" in demo_names()
assert probe_inputs() == "probe inputs"
model = tiny_llava(num_layers=1)
assert len(visual_layouts(model, "probe", llava_inputs(model, BATCH))) == len(BATCH)
assert probe.vllm["ProbeForConditionalGeneration"][0] == "GraphpruneProbeForConditionalGeneration"
print("ok")
"""


def test_adding_a_family_is_adding_a_folder(tmp_path):
    """A copy of the package plus one new folder: the adapters, the supported classes, the export families and
    their demos, the testing builders, the picture layouts and the vLLM architectures all list the new family."""
    package = shutil.copytree(
        Path(graphprune.__file__).parent, tmp_path / "graphprune", ignore=shutil.ignore_patterns("__pycache__")
    )
    probe = package / "families" / "probe"
    probe.mkdir()
    (probe / "__init__.py").write_text(PROBE)
    (probe / "export.py").write_text(PROBE_EXPORT)
    (probe / "testing.py").write_text(
        'CONTRACT = {}\n__all__ = ["probe_inputs"]\n\n\ndef probe_inputs():\n    return "probe inputs"\n'
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE_CHECK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.stdout.strip() == "ok", result.stderr
