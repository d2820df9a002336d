"""benchmarks/prefill.py's presets of the newer families: the visual token counts their comments state, and the
``all-cpu`` / ``all-gpu`` groups that name them."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks.prefill import PRESET_GROUPS
from benchmarks.prefill_families import FAMILY_PRESETS, run_family
from graphprune.models import adapter_for

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

# preset: (model class, visual tokens of its sample), as each preset's comment forms them
VISUAL = {
    "llava-onevision-cpu": ("LlavaOnevisionForConditionalGeneration", 744),
    "llava-onevision-7b": ("LlavaOnevisionForConditionalGeneration", 3699),
    "internvl-cpu": ("InternVLForConditionalGeneration", 768),
    "internvl3-8b": ("InternVLForConditionalGeneration", 1280),
    "smolvlm-cpu": ("SmolVLMForConditionalGeneration", 567),
    "smolvlm2-2.2b": ("SmolVLMForConditionalGeneration", 1377),
    "qwen3-vl-cpu": ("Qwen3VLForConditionalGeneration", 576),
    "qwen3-vl-8b": ("Qwen3VLForConditionalGeneration", 1024),
    "gemma3-cpu": ("Gemma3ForConditionalGeneration", 256),
    "gemma3-4b": ("Gemma3ForConditionalGeneration", 256),
}
# a small decoder in place of the preset's (head_dim 128, as Qwen3-VL's M-RoPE sections need)
SMALL = dict(hidden_size=256, intermediate_size=256, num_layers=4, num_heads=2, num_kv_heads=1, vocab_size=512)


@pytest.mark.parametrize("name", sorted(VISUAL))
def test_preset_sample_has_the_real_models_visual_token_count(name):
    preset = FAMILY_PRESETS[name]
    model = preset["build"](**{**preset["model"], **SMALL}, dtype=torch.float32)
    inputs = preset["inputs"](model, [preset["sample"]])
    n_visual = int(adapter_for(model).visual_mask(model, inputs["input_ids"], None).sum())
    assert (type(model).__name__, n_visual) == VISUAL[name]


def test_groups_name_every_new_preset_once():
    assert sorted(name for name in VISUAL if name.endswith("-cpu")) == sorted(
        set(PRESET_GROUPS["all-cpu"]) & set(VISUAL)
    )
    assert sorted(name for name in VISUAL if not name.endswith("-cpu")) == sorted(
        set(PRESET_GROUPS["all-gpu"]) & set(VISUAL)
    )
    for group in PRESET_GROUPS.values():
        assert len(group) == len(set(group))


def test_qwen3_vl_8b_sections_fit_its_head_dim():
    model = FAMILY_PRESETS["qwen3-vl-8b"]["model"]
    assert 2 * sum(model["mrope_section"]) == model["hidden_size"] // model["num_heads"]


def test_run_family_times_a_smolvlm_preset_whose_decoder_is_text_model(monkeypatch):
    tiny = dict(FAMILY_PRESETS["smolvlm-cpu"], model=dict(version="smolvlm", image_size=16, patch_size=4))
    tiny["sample"] = (5, [(1, 2)], 3)
    monkeypatch.setitem(FAMILY_PRESETS, "smolvlm-tiny", tiny)
    args = argparse.Namespace(device="cpu", dtype=None, k=2, keep=0.5, repeats=1, no_compile=True)
    result = run_family(args, "smolvlm-tiny")
    assert (result["n_visual"], [row["variant"] for row in result["rows"]]) == (12, ["a", "b"])
    assert [row["kv_bytes"] for row in result["rows"]] == [row["expected_kv_bytes"] for row in result["rows"]]
