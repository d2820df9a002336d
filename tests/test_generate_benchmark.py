"""benchmarks/generate.py end to end at tiny shapes: every variant timed through generate, the fractions its targets
are judged by, and the original FastV's compiled decoder forward left in place."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import generate
from benchmarks.harness import llava_inputs, tiny_llava
from benchmarks.original_fastv import OriginalFastV

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)


def test_tiny_run_times_ttft_decode_and_total_of_every_variant(tmp_path):
    argv = ["--preset", "tiny", "--batch", "1", "--new-tokens", "2", "--repeats", "1", "--no-compile"]
    result = generate.main([*argv, "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text())["runs"] == json.loads(json.dumps(result["runs"]))
    assert [(run["mode"], run["batch"]) for run in result["runs"]] == [("eager", 1)]
    for run in result["runs"]:
        variants = {"a", "b", "c"}
        assert set(run["timings"]) == variants
        for key in variants:
            metrics = run["timings"][key]
            assert all(len(metrics[m]["seconds"]) == 1 for m in ("ttft", "decode", "total"))
            assert metrics["ttft"]["min_ms"] > 0 and metrics["total"]["min_ms"] > 0
        fractions = run["fractions"]
        assert 0 < fractions["flops"] < 1 and 0 < fractions["bytes_read"] < 1
        assert fractions["kv_bytes"]["b"] < fractions["kv_bytes"]["a"]


@pytest.mark.compile
def test_static_mode_times_the_unmodified_model_and_graphprune_over_hf_static_compiled_generate(capsys):
    argv = ["--preset", "tiny", "--batch", "1", "--new-tokens", "2", "--repeats", "1", "--modes", "eager", "static"]
    result = generate.main(argv)
    assert [(run["mode"], run["batch"]) for run in result["runs"]] == [("eager", 1), ("static", 1)]
    assert set(result["runs"][1]["timings"]) == {"a", "b"}  # the original FastV code has no static form
    assert "static batch 1" in capsys.readouterr().out.split("every mode, medians")[1]  # side by side with eager
    options = generate.graph_replay_options(torch.device("cpu"))
    assert options["cache_implementation"] == "static" and options["compile_config"].mode == "reduce-overhead"


def test_original_fastv_inside_generate_puts_back_a_forward_set_on_the_decoder():
    model = tiny_llava(num_layers=4)
    lm = model.model.language_model
    inputs = llava_inputs(model, [(5, 1, 4)])
    visual = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    original = OriginalFastV(model, 2, 0.5, int(visual[0]), len(visual), compile=False)
    own = lm.forward  # stands in for torch.compile(lm.forward), set on the instance as the benchmarks do
    lm.forward = own
    with torch.no_grad(), original.installed():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert lm.__dict__["forward"] is own


def test_padded_samples_are_one_token_shorter_each_and_keep_their_image():
    rows = generate.samples(5, 4, 8, padded=True)
    assert [before + after for before, _, after in rows] == [9 - i for i in range(8)]
    assert all(images == 1 and before >= 0 and after >= 1 for before, images, after in rows)
    assert generate.samples(5, 4, 3, padded=False) == [(5, 1, 4)] * 3
