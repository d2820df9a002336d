"""benchmarks/gpu_suite.py end to end at tiny shapes on the CPU: the one GPU run must not be its first run."""

from __future__ import annotations

import json

import pytest
import torch

import graphprune as gp
from benchmarks import gpu_suite
from benchmarks.harness import llava_inputs, shared_copy, tiny_llava
from benchmarks.original_fastv import OriginalFastV

pytestmark = pytest.mark.slow  # the full tier only (CONTRIBUTING.md)

# per case, --smoke's (tokens, visual tokens, kept visual tokens): the two at 36 + 576 + 28 tokens, the
# newer families at their CPU preset's sample (benchmarks/prefill_families.py)
SMOKE_COUNTS = {
    "llava-1.5-7b": (640, 576, 288),
    "qwen2-vl-7b": (640, 576, 288),
    "llava-onevision-7b": (808, 744, 372),
    "internvl3-8b": (832, 768, 384),
    "smolvlm2-2.2b": (649, 567, 284),
    "qwen3-vl-8b": (642, 576, 288),
    "gemma3-4b": (322, 256, 128),
}


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the smoke runs' tiny ops gain nothing from two, and a second thread spins on CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_smoke_run_times_every_variant_of_every_case_and_counts_the_sdpa_kernel_of_each_decoder_layer(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("OUT", str(tmp_path))
    returned = gpu_suite.main(["--smoke", "--device", "cpu", "--repeats", "1", "--new-tokens", "2", "--no-batch8"])
    written = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert written["smoke"] is True and written["results"] == json.loads(json.dumps(returned["results"], default=str))
    assert [case["case"] for case in written["results"]] == list(SMOKE_COUNTS)  # the two first
    for case in written["results"]:
        assert "error" not in case, case.get("error")
        variants = {"a", "b", "c"} if case["case"] == "llava-1.5-7b" else {"a", "b"}
        assert (case["tokens"], case["visual"], case["kept_visual"]) == SMOKE_COUNTS[case["case"]]
        assert 0 < case["flops"]["fraction"] < 1 and case["optimize_s"] > 0
        (batch,) = case["batches"]
        for metric in ("prefill", "ttft", "decode"):
            assert set(batch[metric]) == variants
        assert all(batch[m][key]["median_ms"] > 0 for m in ("prefill", "ttft") for key in variants)
        kernels = case["sdpa_kernels"]
        assert set(kernels) == variants
        for key in variants:
            assert sum(kernels[key]["decoder_layers"].values()) == case["layers"]
            assert sum(kernels[key]["other_sdpa_calls"].values()) > 0  # the vision tower's, told apart by shape
        assert "none (eager)" not in kernels["a"]["decoder_layers"]
        if "c" in variants:  # the original code runs layer k-1 = 1 with eager attention
            assert kernels["c"]["decoder_layers"]["none (eager)"] == 1


def test_original_fastv_inside_generate_gives_graphprunes_tokens_and_puts_the_decoder_back():
    model = tiny_llava(num_layers=4)
    inputs = llava_inputs(model, [(5, 1, 4)])
    visual = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().flatten()
    original = OriginalFastV(model, 2, 0.5, int(visual[0]), len(visual), compile=False)
    pruned = gp.optimize(shared_copy(model), gp.FastV(k=2, keep=0.5))
    options = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    with torch.no_grad():
        with original.installed():
            tokens = model.generate(**inputs, **options)
        expected = pruned.generate(**inputs, **options)
        unmodified = model.generate(**inputs, **options)
    assert torch.equal(tokens, expected)
    assert not torch.equal(tokens, unmodified)  # the tokens above came from pruned prefills
    assert "forward" not in model.model.language_model.__dict__


def test_a_variant_that_fails_leaves_the_others_timed_and_a_case_over_the_budget_is_skipped(monkeypatch, capsys):
    def broken_optimize(model, method):
        raise RuntimeError("graphprune: injected capture failure")

    monkeypatch.delenv("OUT", raising=False)
    monkeypatch.setattr(gpu_suite.gp, "optimize", broken_optimize)
    monkeypatch.setitem(gpu_suite.CASES["qwen3-vl-8b"], "estimate_s", 10**6)  # more than the budget below
    argv = [
        "--smoke",
        "--device",
        "cpu",
        "--cases",
        "llava-1.5-7b",
        "qwen3-vl-8b",
        "--budget-s",
        "420",
        "--repeats",
        "1",
        "--new-tokens",
        "2",
        "--no-batch8",
    ]
    case, skipped = gpu_suite.main(argv)["results"]
    assert "error" not in case and case["optimize_s"] is None
    assert set(case["batches"][0]["prefill"]) == set(case["sdpa_kernels"]) == {"a", "c"}
    assert skipped == dict(case="qwen3-vl-8b", skipped=skipped["skipped"]) and "time budget" in skipped["skipped"]
    out, err = capsys.readouterr()
    assert "injected capture failure" in err
    assert "gpu_suite: skipped (time budget): qwen3-vl-8b" in out


@pytest.mark.compile
def test_graph_replay_times_both_over_hfs_static_compiled_generate(monkeypatch):
    """``--graph-replay``: (a) and (b) through generate over HF's static cache, compiled steps; no original code."""
    monkeypatch.delenv("OUT", raising=False)
    argv = ["--smoke", "--device", "cpu", "--graph-replay", "--cases", "llava-1.5-7b", "--repeats", "1"]
    result = gpu_suite.main([*argv, "--new-tokens", "2", "--no-batch8"])
    (case,) = result["results"]
    assert result["graph_replay"] and [batch["batch"] for batch in case["batches"]] == [1]
    assert set(case["batches"][0]["decode"]) == {"a", "b"}
