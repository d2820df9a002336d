"""The pruning methods side by side at equal FLOPs: prefill time of each, as a ratio of the unmodified model's.

For every target FLOPs fraction (``--fractions``), each method's ``keep`` is the one whose ``gp.flops`` fraction
(the paper's count) for this model and input is closest to the target; the table shows the fraction each method
reaches, its measured prefill ratio and the ratio over the fraction (1.0: the time falls as fast as the FLOPs).
FastV and DART prune once at layer ``k``; PyramidDrop prunes at several layers, keeping ``keep`` of the survivors at
each, so it reaches a fraction with a larger ``keep``; its fraction is its own paper's count (MLP ``3ndm``, FastV's
``2ndm``: ``gp.flops``), so its column is comparable to the others' within about a percent.

Model: the random-weight LLaVA-1.5-shaped CPU decoder of ``benchmarks/prefill.py`` (``cpu-small``: 8 layers,
hidden 1024, 576 visual + 64 text tokens), SDPA attention, eager. What is timed is one prefill as ``generate``
runs it (``use_cache=True``, ``logits_to_keep=1``); the vision tower and embedding run in every variant.
Each method runs on its own module tree over the same weights; medians over ``--repeats`` interleaved rounds (every
variant once per round, so load from elsewhere hits all alike).

    python benchmarks/methods.py                       # fractions 0.5 and 0.3, 5 rounds
    python benchmarks/methods.py --fractions 0.5 0.3 0.2 --repeats 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import graphprune as gp  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    CPU_DECODER,
    device_name,
    llava_inputs,
    measure,
    shared_copy,
    sync_for,
    table,
    tiny_llava,
)
from graphprune.models import adapter_for  # noqa: E402

PRESETS = {
    # prefill.py's cpu-small: LLaVA-1.5 proportions at a size 2 CPU cores run; 576 visual + 64 text tokens
    "cpu-small": dict(model=dict(**CPU_DECODER, vocab_size=32064, image_size=336, patch_size=14), sample=(35, 1, 29)),
    "tiny": dict(model=dict(num_layers=8), sample=(5, 1, 4)),  # the test's: 16 visual tokens
}


def methods(num_layers: int) -> dict:
    """Each method as a function of ``keep``, at the schedule its paper uses scaled to ``num_layers`` layers."""
    return {
        "FastV": lambda keep: gp.FastV(k=2, keep=keep),
        "DART": lambda keep: gp.DART(k=2, keep=keep),
        # the paper's 8/16/24 of 32: stages at a quarter, half and three quarters of the layers
        "PDrop": lambda keep: gp.PDrop(layers=tuple(num_layers * quarter // 4 for quarter in (1, 2, 3)), keep=keep),
    }


def equal_flops_keep(config, make, n_tokens: int, n_visual: int, fraction: float) -> tuple[float, float]:
    """The ``keep`` (a multiple of ``1 / n_visual``) whose FLOPs fraction is closest to ``fraction``, and that
    fraction."""
    best = None
    for kept in range(1, n_visual + 1):
        before, after = gp.flops(config, make(kept / n_visual), n_tokens, n_visual)
        candidate = (abs(after / before - fraction), kept / n_visual, after / before)
        best = min(best or candidate, candidate)
    return best[1], best[2]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.3])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    args = parser.parse_args(argv)
    device, sync = torch.device(args.device), sync_for(torch.device(args.device))
    torch.manual_seed(0)
    preset = PRESETS[args.preset]
    model = tiny_llava(**preset["model"], attn_implementation="sdpa").to(device).eval()
    inputs = {key: value.to(device) for key, value in llava_inputs(model, [preset["sample"]]).items()}
    n_tokens = inputs["input_ids"].shape[1]
    n_visual = int(adapter_for(model).visual_mask(model, inputs["input_ids"], None).sum())
    text = model.config.text_config
    print(
        f"model: {args.preset} LLaVA, {text.num_hidden_layers} layers, hidden {text.hidden_size}, {n_tokens} tokens "
        f"({n_visual} visual), {device_name(device)}"
    )

    rows = []
    for fraction in args.fractions:
        variants, settings = {"unmodified": model}, {}
        for name, make in methods(text.num_hidden_layers).items():
            keep, reached = equal_flops_keep(model.config, make, n_tokens, n_visual, fraction)
            settings[name] = (make(keep), reached)
            variants[name] = gp.optimize(shared_copy(model), settings[name][0])
        calls = {name: (lambda m=m: m(**inputs, use_cache=True, logits_to_keep=1)) for name, m in variants.items()}
        with torch.inference_mode():
            times, _, _ = measure(calls, sync, args.repeats, f"FLOPs {fraction}")
        base = statistics.median(times["unmodified"])
        for name, (method, reached) in settings.items():
            ratio = statistics.median(times[name]) / base
            rows.append(dict(target=fraction, method=method, flops_fraction=reached, prefill_ratio=ratio))
        for name in settings:
            gp.restore(variants[name])
    print(f"\nunmodified prefill: {base * 1e3:.0f} ms (last fraction's rounds)")
    header = ["target FLOPs", "method", "keep", "FLOPs fraction", "prefill ratio", "ratio / FLOPs"]
    cells = [
        [row["target"], type(row["method"]).__name__, f"{row['method'].keep:.3f}", f"{row['flops_fraction']:.3f}"]
        + [f"{row['prefill_ratio']:.3f}", f"{row['prefill_ratio'] / row['flops_fraction']:.2f}"]
        for row in rows
    ]
    print(table(header, cells))
    return rows


if __name__ == "__main__":
    main()
