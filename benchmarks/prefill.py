"""Prefill latency and KV-cache bytes: unmodified LLaVA vs graphprune FastV vs the original FastV code.

Three variants of one random-weight LLaVA-1.5-shaped model, side by side in one run, each eager and
under ``torch.compile``:

(a) the unmodified model (SDPA attention);
(b) graphprune: ``gp.optimize(model, gp.FastV(k=2, keep=0.5), compile=...)``;
(c) FastV as the original repository does it: a hand-written loop over the decoder layers, layer
    ``k - 1`` run with eager attention to get its attention weights (``output_attentions`` in the
    original), the last row's head-mean ranks the visual tokens, the top ``ceil(keep * n_visual)``
    are kept by ``index_select`` on the hidden states and RoPE cos/sin, and layers ``>= k`` run on
    the shorter sequence with the causal mask of the kept positions (``None``, i.e. SDPA
    ``is_causal``, which is what HF builds for an unpadded batch of 1). Batch size 1, image span
    fixed in advance, as in the original code. Compiled per segment (layers < k-1 | layer k-1 +
    ranking + gather | the rest), static shapes.

What is timed is one prefill as ``generate`` would run it: the full model forward with
``use_cache=True`` and logits for the last position only (``logits_to_keep=1``). The vision tower
(a tiny CLIP) and the embedding run eagerly in every variant; their time is printed separately
(a few % of (a) on the CPU preset) and, being the same for all, pulls the ratios slightly towards
1. Timings are medians over ``--repeats`` rounds; each round runs the three variants one after
the other, so that noise from other processes hits all of them alike. Compile time is the first
call minus the median (Dynamo + Inductor; Inductor's on-disk cache makes it shorter on later
runs). KV bytes are counted on the returned cache and checked against ``graphprune.flops.kv_bytes``.

(a) and (b) use two module trees sharing the same weight tensors (``gp.optimize`` works in place);
(a) under compile is ``torch.compile(language_model.forward)`` with default (static) shapes; (b)
under compile is what ``gp.optimize(..., compile=True)`` does (``torch.compile(dynamic=True)``).

"Ranking + gather" is the share of the ``graphprune_*`` nodes in one run of graphprune's pruned
prefill graph under a timing ``torch.fx.Interpreter`` (eager; each node synchronised on CUDA), as
a fraction of the time of all nodes of that same run.

Targets (benchmark figures, not tests): (b) prefill <= 1.1 x (theoretical FLOPs fraction x (a)),
and ranking + gather <= 2 % of the pruned prefill.

Other families (LLaVA-NeXT, Video-LLaVA, Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision, InternVL3, SmolVLM2,
Qwen3-VL) have presets of their own: a CPU-scaled one (``*-cpu``: the cpu-small decoder proportions, a
visual input of the family's shape) and one at the real model's decoder shapes (``*-7b``,
``internvl3-8b``, ``smolvlm2-2.2b``, ``qwen3-vl-8b``, for a GPU). They time (a) and (b) only, since the
original FastV code handles one contiguous image span with 1-D positions, and show each model's speedup
next to its FLOPs fraction. ``--preset`` takes several names; ``all-cpu`` names every ``*-cpu`` preset
and ``all-gpu`` every other (LLaVA-1.5's included), and a summary table closes the run.

    python benchmarks/prefill.py                                   # CPU, small LLaVA-shaped decoder
    python benchmarks/prefill.py --device cuda --preset llava-1.5-7b   # full 7B shapes, fp16
    python benchmarks/prefill.py --preset all-cpu                  # every family, CPU-scaled
    python benchmarks/prefill.py --device cuda --preset all-gpu    # every family, 7B shapes, fp16
    python benchmarks/prefill.py --repeats 9 --no-compile --json prefill.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import fx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import graphprune as gp  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    CPU_DECODER,
    LLAMA_7B,
    device_name,
    llava_inputs,
    measure,
    tiny_llava,
)
from benchmarks.original_fastv import OriginalFastV  # noqa: E402
from benchmarks.prefill_families import (  # noqa: E402
    FAMILY_PRESETS,
    expected_kv,
    median_ms,
    run_family,
    setup,
    variant_rows,
)
from benchmarks.prefill_report import VARIANTS, family_report, report, summary  # noqa: E402
from graphprune import ops  # noqa: E402
from graphprune.methods import n_keep  # noqa: E402
from graphprune.passes import INSERTED_PREFIX  # noqa: E402
from graphprune.reference.fastv import input_embeddings  # noqa: E402

PRESETS = {
    # LLaVA-1.5 proportions (head_dim 128, MHA, intermediate / hidden = 2.69) scaled to 2 CPU cores.
    "cpu-small": dict(
        model=dict(**CPU_DECODER, vocab_size=32064, image_size=336, patch_size=14),
        text=(35, 29),  # 576 visual + 64 text tokens
        dtype="float32",
    ),
    "llava-1.5-7b": dict(
        model=dict(**LLAMA_7B, vocab_size=32064, image_size=336, patch_size=14),
        text=(22, 14),  # 576 visual + 36 text tokens
        dtype="float16",
    ),
}
PRESET_GROUPS = {
    "all-cpu": ["cpu-small", *(name for name in FAMILY_PRESETS if name.endswith("-cpu"))],
    "all-gpu": ["llava-1.5-7b", *(name for name in FAMILY_PRESETS if not name.endswith("-cpu"))],
}


class _NodeTimer(fx.Interpreter):
    """Runs a GraphModule node by node and records each node's wall time."""

    def __init__(self, gm: fx.GraphModule, sync):
        super().__init__(gm)
        self.sync, self.times = sync, {}

    def run_node(self, node):
        self.sync()
        start = time.perf_counter()
        value = super().run_node(node)
        self.sync()
        self.times[node.name] = time.perf_counter() - start
        return value


def ranking_gather_share(model, inputs, method, sync, repeats: int) -> dict:
    """Share of the ``graphprune_*`` nodes in the pruned prefill graph's run time (median over runs)."""
    graph = gp.runtime.optimized_state(model).decoder.prefill_graph
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    batch, length = input_ids.shape
    visual = input_ids == model.config.image_token_id
    dropped = visual.sum(dim=-1) - ops.keep_counts(visual, method.keep)
    slots = torch.arange(int((mask.sum(dim=-1) - dropped).max()), device=input_ids.device)
    positions = torch.arange(length, device=input_ids.device)[None].expand(batch, length)
    shares, inserted_ms, total_ms = [], [], []
    with torch.no_grad():
        embeds = input_embeddings(model, input_ids, inputs.get("pixel_values"))
        for _ in range(repeats + 1):  # the first run warms up
            timer = _NodeTimer(graph, sync)
            timer.run(embeds, mask, positions, visual, slots)
            inserted = sum(t for name, t in timer.times.items() if name.startswith(INSERTED_PREFIX))
            total = sum(timer.times.values())
            shares.append(inserted / total)
            inserted_ms.append(inserted * 1e3)
            total_ms.append(total * 1e3)
    nodes = sorted(name for name in timer.times if name.startswith(INSERTED_PREFIX))
    return dict(
        share=statistics.median(shares[1:]),
        inserted_ms=statistics.median(inserted_ms[1:]),
        interpreted_total_ms=statistics.median(total_ms[1:]),
        nodes=nodes,
    )


def _logits_of(key: str, output) -> torch.Tensor:
    return (output[0] if key == "c" else output.logits)[:, -1].float()


def run(args, preset_name: str) -> dict:
    """LLaVA-1.5: variants (a), (b) and (c), the ranking + gather share, and checks between (b) and (c)."""
    preset = PRESETS[preset_name]
    start = time.perf_counter()
    device, dtype, sync, method, model_a, model_b = setup(args, preset, tiny_llava)
    before_text, after_text = preset["text"]
    inputs = {k: v.to(device) for k, v in llava_inputs(model_a, [(before_text, 1, after_text)]).items()}
    call_args = dict(**inputs, use_cache=True, logits_to_keep=1)
    visual = (inputs["input_ids"][0] == model_a.config.image_token_id).nonzero().flatten()
    n_tokens, n_visual, image_start = inputs["input_ids"].shape[1], len(visual), int(visual[0])
    kept_tokens = n_tokens - n_visual + n_keep(method.keep, n_visual)
    text = model_a.config.text_config
    print(
        f"model: {preset_name}, {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
        f"intermediate {text.intermediate_size}, heads {text.num_attention_heads}/{text.num_key_value_heads}, "
        f"{dtype}, {device}; {n_tokens} tokens ({n_visual} visual); built in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    flops_before, flops_after = gp.flops(model_a.config, method, n_tokens, n_visual)
    flops_fraction = flops_after / flops_before
    expected = expected_kv(model_a.config, dtype, method.k, n_tokens, kept_tokens)
    expected["c"] = expected["b"]
    with torch.no_grad():
        embed_ms = median_ms(
            lambda: input_embeddings(model_a, inputs["input_ids"], inputs.get("pixel_values")), sync, args.repeats
        )

    modes = [False] if args.no_compile else [False, True]
    rows, checks, overhead = [], {}, None
    lm_a = model_a.model.language_model
    with torch.no_grad():
        for compiled in modes:
            label = "compiled" if compiled else "eager"
            start = time.perf_counter()
            gp.optimize(model_b, method, compile=compiled)
            optimize_s = time.perf_counter() - start
            print(f"{label}: gp.optimize took {optimize_s:.1f} s (capture + passes)", flush=True)
            if compiled:
                lm_a.forward = torch.compile(lm_a.forward)
            original = OriginalFastV(model_a, method.k, method.keep, image_start, n_visual, compiled)
            callables = {
                "a": lambda: model_a(**call_args),
                "b": lambda: model_b(**call_args),
                "c": lambda original=original: original(inputs["input_ids"], inputs.get("pixel_values")),
            }
            try:
                times, first, outputs = measure(callables, sync, args.repeats, label, VARIANTS)
                graphprune_kept = gp.last_record(model_b).keep_index[0].tolist()
                checks[label] = dict(
                    kept_positions=len(graphprune_kept),
                    kept_positions_only_in_b=len(set(graphprune_kept) - set(outputs["c"][2].tolist())),
                    logits_max_abs_diff_b_c=float(
                        (_logits_of("b", outputs["b"]) - _logits_of("c", outputs["c"])).abs().max()
                    ),
                )
                if not compiled:
                    overhead = ranking_gather_share(model_b, inputs, method, sync, args.repeats)
            finally:
                gp.restore(model_b)
                lm_a.__dict__.pop("forward", None)
            rows += variant_rows(times, first, outputs, compiled, expected)
    return dict(
        preset=preset_name,
        device=str(device),
        device_name=device_name(device),
        threads=torch.get_num_threads(),
        dtype=str(dtype),
        method=dict(k=method.k, keep=method.keep),
        model={**preset["model"]},
        n_tokens=n_tokens,
        n_visual=n_visual,
        kept_tokens=kept_tokens,
        repeats=args.repeats,
        flops=dict(before=flops_before, after=flops_after, fraction=flops_fraction),
        vision_and_embedding_ms=embed_ms,
        rows=rows,
        checks=checks,
        ranking_gather=overhead,
        versions=dict(torch=torch.__version__, graphprune=gp.__version__),
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    names = sorted([*PRESETS, *FAMILY_PRESETS, *PRESET_GROUPS])
    parser.add_argument(
        "--preset", nargs="+", choices=names, default=["cpu-small"], help="one or more; default: cpu-small"
    )
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported (default: 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--k", type=int, default=2, help="FastV k (default: 2)")
    parser.add_argument("--keep", type=float, default=0.5, help="FastV keep fraction (default: 0.5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    presets = [name for group in args.preset for name in PRESET_GROUPS.get(group, [group])]
    results = []
    for name in dict.fromkeys(presets):
        start = time.perf_counter()
        result = run(args, name) if name in PRESETS else run_family(args, name)
        result["wall_s"] = time.perf_counter() - start
        print(report(result) if name in PRESETS else family_report(result))
        print(f"\nwall time {result['wall_s']:.0f} s")
        results.append(result)
    if len(results) > 1:
        print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
