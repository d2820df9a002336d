"""Prefill latency, cross-attention KV bytes and FLOPs: unmodified Mllama vs graphprune CrossAttentionTrim.

One random-weight model with a LLaMA-3.2-11B-Vision-shaped text decoder (cross-attention every
fifth layer from layer 3, GQA) and one 4-tile image (4 x 1601 = 6404 visual features), side by side
in one run:

(a) the unmodified model (SDPA attention);
(b) ``gp.optimize(model, gp.CrossAttentionTrim(keep, select="topk"))``: a fixed ``ceil(keep * N)`` features;
(c) ``gp.optimize(model, gp.CrossAttentionTrim(keep, select="head_union"))``: the paper's union of
    per-head top-k, whose size depends on how much the heads agree.

What is timed is one prefill as ``generate`` runs it: the model forward with ``use_cache=True`` and
logits for the last position only, fed the vision features directly (``cross_attention_states``),
so the vision tower (identical in all variants) is not part of it. Timings are medians over
``--repeats`` rounds; each round runs the variants one after the other, so that noise from other
processes hits all of them alike. (b) and (c) are separate module trees sharing (a)'s weights.

Random weights: the heads of a random model do not agree on which features matter, so
``head_union`` keeps nearly every feature (the union of many independent top halves); the trained
model keeps about half (arXiv 2504.00557). The actual kept fraction is printed, and the FLOPs
fraction of each variant is computed with its actual kept count.

Target (a benchmark figure, not a test): prefill time <= 1.1 x (theoretical FLOPs fraction x (a)),
and the cross-attention KV bytes of the trimmed layers fall by exactly the kept fraction.

    python benchmarks/cross_attention.py                                            # CPU, scaled
    python benchmarks/cross_attention.py --device cuda --preset llama-3.2-11b-vision  # full shapes, bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import graphprune as gp  # noqa: E402
from benchmarks.harness import IMAGE_TOKEN_ID, device_name, rounds, shared_copy, sync_for, tiny_mllama  # noqa: E402
from graphprune.flops import cross_attention_flops  # noqa: E402

TIME_FACTOR = 1.1
TILES = 4
PRESETS = {
    # Llama-3.2-11B-Vision proportions (head_dim 128, 4 query heads per KV head, cross-attention at
    # 3, 8, 13, ...), width and depth scaled to 2 CPU cores; the real feature count per tile.
    "cpu-small": dict(
        model=dict(
            hidden_size=1024,
            intermediate_size=3584,
            num_layers=20,
            cross_attention_layers=(3, 8, 13, 18),
            num_heads=8,
            num_kv_heads=2,
            vocab_size=32000,
        ),
        text_tokens=64,
        dtype="float32",
    ),
    # meta-llama/Llama-3.2-11B-Vision's text model (MllamaTextConfig of the checkpoint).
    "llama-3.2-11b-vision": dict(
        model=dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_layers=40,
            cross_attention_layers=(3, 8, 13, 18, 23, 28, 33, 38),
            num_heads=32,
            num_kv_heads=8,
            vocab_size=128256,
        ),
        text_tokens=128,
        dtype="bfloat16",
    ),
}
# The vision tower is never run (features are fed directly); only its patch count matters: 560 / 14
# = 40² patches + 1 class token = 1601 features per tile, as in Llama-3.2-Vision.
VISION = dict(image_size=560, patch_size=14)


def _inputs(model, text_tokens: int, device) -> dict:
    """``<bos> <|image|> text...`` with one 4-tile image, as MllamaProcessor lays it out."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.text_config.vocab_size
    ids = torch.randint(IMAGE_TOKEN_ID + 1, vocab, (1, text_tokens), generator=generator)
    ids[0, 0], ids[0, 1] = 1, IMAGE_TOKEN_ID
    cross_mask = torch.zeros(1, text_tokens, 1, TILES, dtype=torch.long)
    cross_mask[0, 1:] = 1
    features = TILES * model.model.vision_model.num_patches
    hidden = model.config.text_config.hidden_size
    states = torch.randn(1, features, hidden, generator=generator).to(model.dtype)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "cross_attention_mask": cross_mask.to(device),
        "cross_attention_states": states.to(device),
    }


def _cross_kv_bytes(cache, layers) -> list[int]:
    return [cache.layers[i].keys.nbytes + cache.layers[i].values.nbytes for i in layers]


def run(args) -> dict:
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or preset["dtype"])
    sync = sync_for(device)
    print(f"building {args.preset} on {device} ({dtype}) ...", flush=True)
    model = tiny_mllama(**preset["model"], **VISION, dtype=dtype, device=device)
    inputs = _inputs(model, preset["text_tokens"], device)
    n_features = inputs["cross_attention_states"].shape[1]
    cross_layers = list(preset["model"]["cross_attention_layers"])
    variants = {"a": ("(a) unmodified", None)}
    variants["b"] = ("(b) graphprune topk", gp.CrossAttentionTrim(keep=args.keep, select="topk"))
    variants["c"] = ("(c) graphprune head_union", gp.CrossAttentionTrim(keep=args.keep, select="head_union"))
    models = {"a": model}
    for key, (_, method) in variants.items():
        if method is not None:
            models[key] = gp.optimize(shared_copy(model), method)
    return _time_and_count(args, models, variants, inputs, n_features, cross_layers, sync, dtype, device)


def _time_and_count(args, models, variants, inputs, n_features, cross_layers, sync, dtype, device) -> dict:
    def prefill(key):
        with torch.no_grad():
            return models[key](**inputs, use_cache=True, logits_to_keep=1)

    outputs = {key: prefill(key) for key in models}  # warm-up, and the outputs we count
    prefill("a")
    if args.profile:
        print(profile(models, inputs), flush=True)
    times = rounds({key: lambda key=key: prefill(key) for key in models}, sync, args.repeats, "prefill")
    text_tokens = inputs["input_ids"].shape[1]
    rows = []
    for key, (name, method) in variants.items():
        cache = outputs[key].past_key_values
        kv = _cross_kv_bytes(cache, cross_layers)
        kept = n_features if method is None else len(gp.explain(models[key], **inputs).kept[0])
        before, after = cross_attention_flops(models[key].config, text_tokens, n_features, kept)
        rows.append(
            dict(
                variant=key,
                name=name,
                median_ms=statistics.median(times[key]) * 1e3,
                min_ms=min(times[key]) * 1e3,
                max_ms=max(times[key]) * 1e3,
                kept=kept,
                kept_fraction=kept / n_features,
                flops_before=before,
                flops_after=after,
                cross_kv_bytes=kv,
                last_token_logits=outputs[key].logits[0, -1].float().cpu(),
            )
        )
    base_logits = rows[0]["last_token_logits"]
    for row in rows:
        row["max_abs_logit_diff_vs_a"] = float((row.pop("last_token_logits") - base_logits).abs().max())
    return dict(
        preset=args.preset,
        device=str(device),
        device_name=device_name(device),
        threads=torch.get_num_threads(),
        dtype=str(dtype).removeprefix("torch."),
        keep=args.keep,
        repeats=args.repeats,
        text_tokens=text_tokens,
        features=n_features,
        cross_attention_layers=cross_layers,
        rows=rows,
    )


def profile(models: dict, inputs: dict, top: int = 14) -> str:
    """Self CPU time per aten op of one prefill of each variant (torch.profiler), the largest first, and the
    FLOPs torch counts in each (FlopCounterMode: matmuls; the CPU SDPA kernel is not counted)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    from torch.utils.flop_counter import FlopCounterMode

    per_variant, counted = {}, {}
    for key, model in models.items():
        with torch.no_grad(), torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            model(**inputs, use_cache=True, logits_to_keep=1)
        per_variant[key] = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()}
        with torch.no_grad(), FlopCounterMode(display=False) as flops:
            model(**inputs, use_cache=True, logits_to_keep=1)
        counted[key] = flops.get_total_flops()
    totals = {key: sum(ms for ms, _ in ops.values()) for key, ops in per_variant.items()}
    names = sorted(
        set().union(*per_variant.values()), key=lambda n: -max(v.get(n, (0, 0))[0] for v in per_variant.values())
    )
    lines = ["", "self CPU ms per op, one prefill (calls):", f"{'op':<40}" + "".join(f"{k:>18}" for k in models)]
    for name in names[:top]:
        cells = "".join(
            f"{per_variant[k].get(name, (0, 0))[0]:>11.1f} ({per_variant[k].get(name, (0, 0))[1]:>4})" for k in models
        )
        lines.append(f"{name:<40}{cells}")
    lines.append(f"{'total':<40}" + "".join(f"{totals[k]:>18.1f}" for k in models))
    lines.append(
        f"{'GFLOP counted by torch (vs a)':<40}"
        + "".join(f"{counted[k] / 1e9:>9.2f} ({counted[k] / counted['a']:.3f})" for k in models)
    )
    return "\n".join(lines)


def report(result: dict) -> str:
    rows = result["rows"]
    base = rows[0]
    header = (
        f"{'variant':<28} {'prefill ms':>10} {'(min-max)':>15} {'vs (a)':>7} {'kept':>11} "
        f"{'GFLOP':>8} {'FLOPs frac':>10} {'target':>7} {'x-attn KV MiB':>13} {'vs (a)':>7}"
    )
    lines = [
        "",
        f"cross-attention prefill, {result['preset']} on {result['device']} ({result['device_name']}, "
        f"{result['threads']} threads), {result['dtype']}: {result['text_tokens']} text tokens, one {TILES}-tile "
        f"image = {result['features']} features, cross-attention layers {result['cross_attention_layers']}, "
        f"keep={result['keep']}; median of {result['repeats']}",
        header,
        "-" * len(header),
    ]
    for r in rows:
        fraction = r["flops_after"] / r["flops_before"]
        ratio = r["median_ms"] / base["median_ms"]
        verdict = "" if r is base else ("PASS" if ratio <= TIME_FACTOR * fraction else "MISS")
        spread = f"({r['min_ms']:.0f}-{r['max_ms']:.0f})"
        kv = sum(r["cross_kv_bytes"])
        lines.append(
            f"{r['name']:<28} {r['median_ms']:>10.1f} {spread:>15} {ratio:>7.3f} "
            f"{r['kept']:>5} {r['kept_fraction']:>5.1%} {r['flops_after'] / 1e9:>8.1f} {fraction:>10.3f} "
            f"{verdict:>7} {kv / 2**20:>13.1f} {kv / sum(base['cross_kv_bytes']):>7.3f}"
        )
    lines += ["", f"target: prefill / (a) <= {TIME_FACTOR} x FLOPs fraction (paper formula, actual kept count)"]
    for r in rows[1:]:
        trimmed, original = r["cross_kv_bytes"][1:], base["cross_kv_bytes"][1:]
        exact = all(t * result["features"] == o * r["kept"] for t, o in zip(trimmed, original, strict=True))
        lines.append(
            f"{r['name']}: KV bytes of the trimmed layers {sum(trimmed) / 2**20:.1f} / {sum(original) / 2**20:.1f} MiB"
            f" = {sum(trimmed) / sum(original):.4f}, kept fraction {r['kept_fraction']:.4f}: "
            f"{'exact' if exact else 'NOT EXACT'}; first cross-attention layer unchanged: "
            f"{r['cross_kv_bytes'][0] == base['cross_kv_bytes'][0]}; "
            f"last-token logits max |diff| vs (a) {r['max_abs_logit_diff_vs_a']:.3g}"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported (default: 5)")
    parser.add_argument("--keep", type=float, default=0.5, help="CrossAttentionTrim keep fraction (default: 0.5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--profile", action="store_true", help="first print each variant's self CPU time per op")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    start = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - start
    print(report(result))
    print(f"\nwall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
