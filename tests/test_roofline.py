"""benchmarks/roofline.py: a 7B LLaVA prefill at batch 1 is compute-bound on a Jetson AGX Orin, its decode step
memory-bound; FastV's pruned prefill counts the FLOPs ``gp.flops`` gives."""

from __future__ import annotations

import graphprune as gp
from benchmarks import roofline

METHOD = gp.FastV(k=2, keep=0.5)


def test_orin_prefill_is_compute_bound_and_decode_memory_bound():
    steps = {name: (paper, flop, read) for name, paper, flop, read in roofline.steps(640, 576, METHOD)}
    peak, bandwidth = roofline.DEVICES["Jetson AGX Orin 64GB"]
    for name, (_, flop, read) in steps.items():
        compute_bound = flop / peak > read / bandwidth
        assert compute_bound == name.startswith("prefill"), name
    before, after = gp.flops(roofline.llama_7b(), METHOD, 640, 576)
    assert (steps["prefill, unmodified"][0], steps["prefill, graphprune"][0]) == (before, after)
    assert steps["prefill, graphprune"][1] < 0.6 * steps["prefill, unmodified"][1]  # 320 of 640 positions go
    assert steps["decode step, graphprune"][2] < steps["decode step, unmodified"][2]  # less KV read


def test_weight_bytes_are_those_of_a_7b_llama_in_fp16():
    assert 13.0e9 < roofline.weight_bytes(roofline.llama_7b()) < 13.5e9  # 6.6 B parameters with the LM head


def test_report_names_both_devices_and_the_bound(capsys):
    text = roofline.main([])
    assert "Jetson AGX Orin 64GB" in text and "H100 SXM5" in text and "compute" in text
    assert capsys.readouterr().out.strip() == text.strip()
