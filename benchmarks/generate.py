"""End to end through ``model.generate``: TTFT, decode per new token and total latency, unmodified LLaVA vs
graphprune FastV vs the original FastV code, batch 1 / 8 / 32, eager and ``torch.compile``.

Variants, side by side in one run over the same weights: (a) the unmodified model (SDPA); (b) graphprune,
``gp.optimize(model, gp.FastV(k=2, keep=0.5), compile=...)`` on a second module tree over (a)'s weights;
(c) the original FastV code (``benchmarks/original_fastv.py``: eager attention at layer k-1) running
``generate``'s prefill, its decode steps those of (a) on the pruned cache; batch 1 only, as the original.
Under compile, (a) is ``torch.compile(language_model.forward)``, (b) ``gp.optimize(..., compile=True)``, (c)
its compiled segments, then (a)'s compiled forward. The static mode is HF's own low-latency route for both (a) and
(b): ``generate(cache_implementation="static", compile_config=CompileConfig(fullgraph=True, dynamic=False,
mode="reduce-overhead"))``, the prefill eager (b: ``gp.optimize(..., compile="reduce-overhead")``, its pruned prefill
under inductor), the one-token decode steps compiled by HF (CUDA graphs replayed on a GPU; on CPU the same compiled
steps without graphs, HF told to compile there); (c) does not run in it.

Per batch size and mode, interleaved rounds (order reversed every other round): TTFT = ``generate`` of 1
token; total = ``generate`` of ``--new-tokens``; decode per new token = (total - TTFT) / (new tokens - 1).
Min and median over rounds, and each ratio to (a). Targets (issue 15): TTFT of (b) <= 1.1 x FLOPs fraction
x (a); decode of (b) <= (a), and within 1.1 x of the bytes-read fraction (decoder and head weights + kept KV
over weights + full KV, at the prompt's length) where the KV cache dominates.

``--padded`` left-pads the batch as a batched ``generate`` usually runs: sample i's prompt is i tokens shorter
(taken from the text before the image, then after it), so the decode steps run on a padded cache.

    python benchmarks/generate.py                                    # cpu-small, batch 1 8 32, eager + compile
    python benchmarks/generate.py --batch 1 8 --no-compile --repeats 3
    python benchmarks/generate.py --batch 8 --no-compile --padded    # a left-padded batch
    python benchmarks/generate.py --device cuda --preset llava-1.5-7b
    python benchmarks/generate.py --preset tiny --batch 1 8 --modes eager static    # static cache + graph replay
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]

import graphprune as gp  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    CPU_DECODER,
    IMAGE_TOKEN_ID,
    LLAMA_7B,
    cache_bytes,
    device_name,
    generate_rounds,
    graph_replay_options,
    greedy_generate,
    llava_inputs,
    shared_copy,
    spread_ms,
    sync_for,
    table,
    tiny_llava,
)
from benchmarks.original_fastv import OriginalFastV  # noqa: E402

PRESETS = {
    # the shape: LLaVA-1.5 proportions at 8 layers, hidden 1024; 36 text + 576 visual + 28 text tokens
    "cpu-small": dict(model=dict(**CPU_DECODER, vocab_size=32064, image_size=336, patch_size=14), text=(36, 28)),
    "tiny": dict(model=dict(num_layers=4), text=(5, 4)),  # the tiny builder's defaults, to check the script
    "llava-1.5-7b": dict(model=dict(**LLAMA_7B, vocab_size=32064, image_size=336, patch_size=14), text=(36, 28)),
}
VARIANTS = {"a": "unmodified", "b": "graphprune", "c": "original FastV"}
MODES = ("eager", "compiled", "static")


def _weight_bytes(model) -> int:
    """Bytes a decode step reads of weights: the decoder's and the head's (the vision tower runs at prefill)."""
    parts = [model.model.language_model, model.lm_head]
    return sum(p.nbytes for part in parts for p in part.parameters())


def samples(before: int, after: int, batch: int, padded: bool) -> list[tuple[int, int, int]]:
    """``llava_inputs``' samples: ``batch`` equal prompts, or with ``padded`` sample i's shorter by i tokens (text
    before the image first, then after it; at least one text token stays)."""
    rows = []
    for i in range(batch):
        short = min(i, before + after - 1) if padded else 0
        rows.append((before - min(short, before), 1, after - max(short - before, 0)))
    return rows


def time_batch(
    models: dict, original, inputs: dict, args, repeats: int, sync, label: str, compiled: bool, options: dict
) -> dict:
    """TTFT, decode per token and total of each variant at one batch size and mode (``options``: generate's)."""

    def generate(key):
        if key != "c":
            return lambda n: greedy_generate(models[key], inputs, n, **options)

        def run(n):
            with original.installed():
                return greedy_generate(models["a"], inputs, n)

        return run

    generates = {key: generate(key) for key in [*models, *(["c"] if original is not None else [])]}
    prompt = inputs["input_ids"].shape[1]
    first = {}
    for key, fn in generates.items():  # warm-up: every length of the timed calls (twice under compile)
        print(f"  {label}: warm-up of {VARIANTS[key]} ...", flush=True)
        start = time.perf_counter()
        for n in (1, args.new_tokens) * (2 if compiled else 1):
            out = fn(n)
            if out.shape[1] != prompt + n:
                raise RuntimeError(f"{VARIANTS[key]}: generate gave {out.shape[1] - prompt} tokens, not {n}")
        first[key] = time.perf_counter() - start
    times = generate_rounds(generates, sync, repeats, args.new_tokens, label)
    return {
        key: {metric: spread_ms(seconds) | dict(seconds=seconds) for metric, seconds in metrics.items()}
        | dict(warm_up_s=first[key])
        for key, metrics in times.items()
    }


def fractions(model_a, model_b, inputs, k: int) -> dict:
    """The FLOPs fraction and the bytes-read fraction of a decode step, from (a)'s and (b)'s prefill caches."""
    ids = inputs["input_ids"]
    n_tokens, n_visual = ids.shape[1], int((ids[0] == IMAGE_TOKEN_ID).sum())
    before, after = gp.flops(model_a.config, gp.FastV(k=k, keep=0.5), n_tokens, n_visual)
    with torch.no_grad():
        kv = {
            key: cache_bytes(m(**inputs, use_cache=True, logits_to_keep=1).past_key_values)
            for key, m in (("a", model_a), ("b", model_b))
        }
    weights = _weight_bytes(model_a)
    return dict(
        flops=after / before,
        bytes_read=(weights + kv["b"]) / (weights + kv["a"]),
        weight_bytes=weights,
        kv_bytes=kv,
        kv_share_a=kv["a"] / (weights + kv["a"]),
    )


def run(args) -> dict:
    preset = PRESETS[args.preset]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    sync = sync_for(device)
    torch.manual_seed(0)
    model_a = tiny_llava(**preset["model"], dtype=dtype, attn_implementation="sdpa").to(device)
    model_b = shared_copy(model_a)
    method = gp.FastV(k=args.k, keep=args.keep)
    text = model_a.config.text_config
    result = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        preset=args.preset,
        device=device_name(device),
        threads=torch.get_num_threads(),
        dtype=str(dtype),
        method=dict(k=method.k, keep=method.keep),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        new_tokens=args.new_tokens,
        padded=args.padded,
        versions=dict(torch=torch.__version__, graphprune=gp.__version__),
        runs=[],
    )
    lm_a = model_a.model.language_model
    for mode in ["eager"] if args.no_compile else args.modes:
        compiled, static = mode != "eager", mode == "static"
        start = time.perf_counter()
        gp.optimize(model_b, method, compile="reduce-overhead" if static else compiled)
        print(f"{mode}: gp.optimize took {time.perf_counter() - start:.1f} s", flush=True)
        if mode == "compiled":
            lm_a.forward = torch.compile(lm_a.forward)
        options = graph_replay_options(device) if static else {}
        try:
            for batch in args.batch:
                before, after = preset["text"]
                rows = samples(before, after, batch, args.padded)
                inputs = {k: v.to(device) for k, v in llava_inputs(model_a, rows).items()}
                original = None
                if batch == 1 and not static:
                    visual = (inputs["input_ids"][0] == IMAGE_TOKEN_ID).nonzero().flatten()
                    original = OriginalFastV(model_a, method.k, method.keep, int(visual[0]), len(visual), compiled)
                repeats = args.repeats if batch < 32 else args.repeats_b32
                label = f"{mode} batch {batch}"
                with torch.no_grad():
                    models = {"a": model_a, "b": model_b}
                    timings = time_batch(models, original, inputs, args, repeats, sync, label, compiled, options)
                run_ = dict(mode=mode, batch=batch, tokens=inputs["input_ids"].shape[1], repeats=repeats)
                run_ |= dict(padding=int((inputs["attention_mask"] == 0).sum()))
                run_ |= dict(fractions=fractions(model_a, model_b, inputs, method.k), timings=timings)
                result["runs"].append(run_)
                print(report_run(run_), flush=True)
        finally:
            gp.restore(model_b)
            lm_a.__dict__.pop("forward", None)
    return result


def report_modes(runs: list[dict]) -> str:
    """Per batch size, every mode side by side: the median TTFT and decode per token of (a) and (b), (b) over (a),
    and each over the eager (a) of its batch."""
    eager = {run_["batch"]: run_["timings"]["a"] for run_ in runs if run_["mode"] == "eager"}
    rows = []
    for run_ in runs:
        a, b = (run_["timings"][key] for key in ("a", "b"))
        row = [f"{run_['mode']} batch {run_['batch']}"]
        for metric in ("ttft", "decode"):
            base = eager.get(run_["batch"], {}).get(metric, {}).get("median_ms")
            med_a, med_b = a[metric]["median_ms"], b[metric]["median_ms"]
            row += [med_a, med_b, med_b / med_a, base / med_a if base else None, base / med_b if base else None]
        rows.append(row)
    header = ["mode, batch"] + [
        f"{metric} {column}"
        for metric in ("TTFT", "decode/tok")
        for column in ("a ms", "b ms", "b/a", "eager a / a", "eager a / b")
    ]
    return "\nevery mode, medians (eager a / x: speed-up over the unmodified eager model)\n" + table(header, rows)


def report_run(run_: dict) -> str:
    """One batch size and mode as a table: min and median of each metric, and the ratio of medians to (a)."""
    timings, frac = run_["timings"], run_["fractions"]
    rows = []
    for key, metrics in timings.items():
        row = [VARIANTS[key]]
        for metric in ("ttft", "decode", "total"):
            median = metrics[metric]["median_ms"]
            row += [metrics[metric]["min_ms"], median, median / timings["a"][metric]["median_ms"]]
        rows.append(row)
    header = ["variant"] + [f"{m} {s}" for m in ("TTFT", "decode/tok", "total") for s in ("min ms", "med ms", "x a")]
    head = (
        f"\n{run_['mode']}, batch {run_['batch']}, {run_['tokens']} tokens ({run_['padding']} padding), "
        f"{run_['repeats']} rounds: "
        f"FLOPs fraction {frac['flops']:.3f} (TTFT target {1.1 * frac['flops']:.3f} x a), decode bytes-read "
        f"fraction {frac['bytes_read']:.3f} (KV {100 * frac['kv_share_a']:.0f} % of (a)'s bytes read)"
    )
    return head + "\n" + table(header, rows)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small", help="default: cpu-small")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: fp16 on cuda, else fp32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32], help="default: 1 8 32")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per generate (default: 16)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default: 3)")
    parser.add_argument("--repeats-b32", type=int, default=1, help="rounds at batch >= 32 (default: 1)")
    parser.add_argument("--no-compile", action="store_true", help="eager only (as --modes eager)")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=["eager", "compiled"],
        help="default: eager compiled; static: HF's static cache and compiled decode steps (graph replay)",
    )
    parser.add_argument("--k", type=int, default=2, help="FastV k (default: 2)")
    parser.add_argument("--keep", type=float, default=0.5, help="FastV keep fraction (default: 0.5)")
    parser.add_argument("--padded", action="store_true", help="left-padded batch: sample i's prompt i tokens shorter")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if min(args.repeats, args.repeats_b32) < 1 or args.new_tokens < 2 or min(args.batch) < 1:
        parser.error("--repeats and --repeats-b32 must be >= 1, --new-tokens >= 2, --batch >= 1")
    start = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - start
    if len({run_["mode"] for run_ in result["runs"]}) > 1:
        print(report_modes(result["runs"]))
    print(f"\nwall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
