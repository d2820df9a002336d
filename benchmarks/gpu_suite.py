"""GPU suite: 7B-shaped VLMs, unmodified vs graphprune FastV (vs the original FastV code where it applies).

One command for a machine with one CUDA GPU, under 8 minutes on an H100 (no network, no hub):

    PYTHONUNBUFFERED=1 OUT=/some/folder python benchmarks/gpu_suite.py [--cases NAME ...]

Per case, fp16 random weights made on the GPU directly (``torch.device`` and the default dtype set while
the model is built, never fp32 on the CPU first). The issue's two first, then the newer families:

- ``llava-1.5-7b``: ``LlavaForConditionalGeneration``, Llama-2-7B decoder (32 layers, hidden 4096, 32
  heads, MLP 11008, vocab 32064), CLIP ViT-L/14-336 tower (24 layers, hidden 1024, 576 patches);
  prompt 36 text + 576 visual + 28 text tokens;
- ``qwen2-vl-7b``: ``Qwen2VLForConditionalGeneration``, Qwen2-VL-7B decoder (28 layers, hidden 3584,
  28/4 heads, MLP 18944, vocab 152064) and vision tower (32 blocks, width 1280); one 672x672 image
  (48x48 patches merged 2x2 = 576 visual tokens) between 36 and 28 text tokens (vision start/end included);
- ``llava-onevision-7b`` (3735 tokens, 3699 visual), ``internvl3-8b`` (1316, 1280), ``smolvlm2-2.2b`` (1453,
  1377), ``qwen3-vl-8b`` (1062, 1024), ``gemma3-4b`` (294, 256): ``benchmarks/prefill_families.py``'s presets of
  those names (the real decoder shape and visual token count; how each count is formed is commented there), built
  by the family's ``graphprune.testing`` builder with its 2-layer vision tower. The tower's time is in (a) and (b)
  alike and FastV does not touch it, so a real tower would move the prefill ratio towards 1 by its share.

Variants: (a) the unmodified model (SDPA); (b) graphprune, ``gp.optimize(FastV(k=2, keep=0.5))`` on a second
module tree over (a)'s weights; (c) the original FastV code (``OriginalFastV``: eager attention at layer k-1;
LLaVA-1.5 at batch 1 only, as the original). (c) is not run for the others: the original code is LLaVA-1.5's
(Llama decoder, 1-D RoPE, one image span); Qwen2-VL and Qwen3-VL have M-RoPE (Qwen3-VL also DeepStack), SmolVLM2's
tiles are split by text tokens, Gemma 3's image tokens attend each other both ways, and porting it to
LLaVA-OneVision or InternVL3 would make it ours, not the original. Timed side by side in interleaved rounds (the
order reversed every other round), min and median: the prefill forward (``use_cache=True``, ``logits_to_keep=1``),
TTFT through ``generate(max_new_tokens=1)``, and decode per new token (``generate`` of N tokens minus TTFT, over
N - 1, per round); at batch 1, then batch 8 (a, b) where the budget allows. Also: ``gp.optimize``'s own time, the
FLOPs fraction (``gp.flops``) next to the measured prefill ratio (b)/(a), and which SDPA kernel runs in how many
decoder layers of one profiled prefill per variant (``torch.profiler``; decoder calls told from the vision tower's
by heads and head size).

Time budget (``--budget-s``, default 420 s of the 8 minutes, the rest start-up and slack; none for ``--smoke``).
Estimated seconds per case at batch 1 on an H100 (build ~5, ``gp.optimize`` ~0.7-1 s per decoder layer as
measured on the GPU, the SDPA-kernel profiles, 8 interleaved rounds of prefill, TTFT and 32 tokens at ~1 ms per
layer and token):
llava-1.5-7b 65, qwen2-vl-7b 60, llava-onevision-7b 60, internvl3-8b 55, smolvlm2-2.2b 45, qwen3-vl-8b 75,
gemma3-4b 50; all seven about 410 s. A case whose estimate exceeds the time left is skipped whole, and said
so; batch 8 runs only if twice batch 1's time still leaves every later case its estimate (so in the default
run of seven it is mostly skipped: ``--cases llava-1.5-7b qwen2-vl-7b`` gives the issue's two their batch 8).

``--graph-replay`` times both under HF's low-latency route instead (issue 22 item 6): ``generate`` over HF's static
cache with its one-token decode steps compiled for CUDA graph replay (``harness.graph_replay_options``: the same
``CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead")`` for (a) and (b)), (b) optimized with
``compile="reduce-overhead"`` (its pruned prefill under inductor, HF's prefill of (a) eager as HF runs it); (c) is
left out (the original code has no static form). Each case then compiles a decode step per variant and batch size
(graph capture included): ``GRAPH_REPLAY_EXTRA_S`` more per case in the estimates, a guess not yet measured. The
commands a session with a GPU runs (batch 1 and 8 of the issue's two, one case per command to stay within a
10-minute call):

    PYTHONUNBUFFERED=1 OUT=/f python benchmarks/gpu_suite.py --graph-replay --cases llava-1.5-7b --budget-s 500
    PYTHONUNBUFFERED=1 OUT=/f python benchmarks/gpu_suite.py --graph-replay --cases qwen2-vl-7b --budget-s 500

Every case runs in a try/except that prints the traceback and goes on; results are written after each
case to ``$OUT/gpu_suite.json`` (if ``OUT`` is set) and ``--json``. ``--smoke`` runs tiny fp32 decoders
(CPU allowed: ``--smoke --device cpu``) through the same code, the profiler with CPU activities; the newer
families then take their CPU preset's sample (``llava-onevision-cpu``, ``internvl-cpu``, ``smolvlm-cpu``,
``qwen3-vl-cpu``: 567-768 visual tokens).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers
from transformers import LlavaForConditionalGeneration, Qwen2VLForConditionalGeneration

# run from a checkout without installing; this file's folder off the path (its onnx.py and vllm.py would shadow those)
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]


import graphprune as gp  # noqa: E402
from benchmarks.gpu_models import build, llava_config, preset_model, qwen2_vl_config  # noqa: E402
from benchmarks.gpu_report import VARIANTS, report, seconds_text, summary  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    device_name,
    generate_rounds,
    graph_replay_options,
    greedy_generate,
    llava_inputs,
    qwen2_vl_inputs,
    rounds,
    shared_copy,
    spread_ms,
    sync_for,
    timed,
)
from benchmarks.original_fastv import OriginalFastV  # noqa: E402
from benchmarks.prefill_families import FAMILY_PRESETS  # noqa: E402
from benchmarks.sdpa_kernels import sdpa_kernels  # noqa: E402
from graphprune.models import adapter_for  # noqa: E402


def _configured(make_config, model_class):
    return lambda smoke, device, dtype: build(make_config(smoke), model_class, device, dtype)


def _preset(name: str, smoke_name: str, estimate_s: float) -> dict:
    """A case of ``FAMILY_PRESETS[name]``; ``--smoke`` runs ``smoke_name``'s sample and vision settings."""

    def model(smoke: bool, device, dtype):
        return preset_model(smoke_name if smoke else name, smoke, device, dtype)

    preset, smoke_preset = FAMILY_PRESETS[name], FAMILY_PRESETS[smoke_name]
    samples = dict(sample=preset["sample"], smoke_sample=smoke_preset["sample"])
    return dict(model=model, inputs=preset["inputs"], **samples, original=False, estimate_s=estimate_s)


# Per case: model(smoke, device, dtype), the inputs builder and one sample in its format (and --smoke's), whether
# seconds a case takes more under --graph-replay: a decode step compiled per variant and batch size (a guess)
GRAPH_REPLAY_EXTRA_S = 120
# the original FastV code applies, and the estimated seconds of the case at batch 1 on an H100 (see the docstring).
CASES = {
    # the two first; 36 text + 576 visual + 28 text tokens
    "llava-1.5-7b": dict(
        model=_configured(llava_config, LlavaForConditionalGeneration),
        inputs=llava_inputs,
        sample=(36, 1, 28),
        smoke_sample=(36, 1, 28),
        original=True,
        estimate_s=65,
    ),
    "qwen2-vl-7b": dict(
        model=_configured(qwen2_vl_config, Qwen2VLForConditionalGeneration),
        inputs=qwen2_vl_inputs,
        sample=(35, [(48, 48)], [], 27),
        smoke_sample=(35, [(48, 48)], [], 27),
        original=False,
        estimate_s=60,
    ),
    # benchmarks/prefill_families.py's presets: the real models' decoder shapes and visual token counts; --smoke
    # takes the CPU preset's sample (fewer visual tokens), both with a tiny decoder
    "llava-onevision-7b": _preset("llava-onevision-7b", "llava-onevision-cpu", 60),
    "internvl3-8b": _preset("internvl3-8b", "internvl-cpu", 55),
    "smolvlm2-2.2b": _preset("smolvlm2-2.2b", "smolvlm-cpu", 45),
    "qwen3-vl-8b": _preset("qwen3-vl-8b", "qwen3-vl-cpu", 75),
    "gemma3-4b": _preset("gemma3-4b", "gemma3-cpu", 50),
}


def _inputs(model, make, sample, batch: int, device) -> dict:
    return {k: v.to(device) for k, v in make(model, [sample] * batch).items()}


def _optional(label: str, fn, *args):
    """``fn(*args)``, or None after printing the traceback: a check that fails does not end the case."""
    try:
        return fn(*args)
    except Exception:
        traceback.print_exc()
        print(f"  {label}: failed (traceback above); going on", flush=True)
        return None


def time_batch(models: dict, inputs: dict, original, args, sync, label: str) -> dict:
    """Prefill, TTFT and decode per token of each variant at one batch size, interleaved rounds."""
    options = graph_replay_options(inputs["input_ids"].device) if args.graph_replay else {}

    def prefill(key):
        if key == "c":
            return lambda: original(inputs["input_ids"], inputs["pixel_values"])
        return lambda: models[key](**inputs, use_cache=True, logits_to_keep=1)

    def generate(key):
        if key != "c":
            return lambda new_tokens: greedy_generate(models[key], inputs, new_tokens, **options)

        def run(new_tokens):
            with original.installed():
                return greedy_generate(models["a"], inputs, new_tokens)

        return run

    keys = [*models, *(["c"] if original is not None else [])]
    prompt = inputs["input_ids"].shape[1]
    result = dict(batch=inputs["input_ids"].shape[0], tokens=prompt)
    with torch.no_grad():
        for key in list(keys):  # warm-up; and every variant's generate gives the asked length
            try:
                prefill(key)()
                out = generate(key)(args.new_tokens)
                if out.shape[1] != prompt + args.new_tokens:
                    raise RuntimeError(f"{VARIANTS[key]}: generate gave {out.shape[1] - prompt} new tokens")
            except Exception:
                if key == "a":
                    raise
                traceback.print_exc()
                print(f"  {label}: {VARIANTS[key]} failed (traceback above); timing the others", flush=True)
                keys.remove(key)
        calls = {key: prefill(key) for key in keys}
        result["prefill"] = rounds(calls, sync, args.repeats, f"{label} prefill", alternate=True)
        generates = {key: generate(key) for key in keys}
        times = generate_rounds(generates, sync, args.repeats, args.new_tokens, f"{label} generate")
    result["ttft"] = {key: times[key]["ttft"] for key in keys}
    result["decode"] = {key: times[key]["decode"] for key in keys}
    for metric in ("prefill", "ttft", "decode"):
        result[metric] = {key: spread_ms(seconds) | dict(seconds=seconds) for key, seconds in result[metric].items()}
    return result


def run_case(name: str, args, device, dtype, deadline: float) -> dict:
    case = CASES[name]
    method = gp.FastV(k=2, keep=0.5)
    sync = sync_for(device)
    started = time.perf_counter()
    build_s, model = timed(lambda: case["model"](args.smoke, device, dtype), sync)
    text = model.config.get_text_config(decoder=True)
    heads, layers = text.num_attention_heads, text.num_hidden_layers
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{name}: {type(model).__name__}, {params / 1e9:.2f} B parameters, {dtype}, built in {build_s:.1f} s",
        flush=True,
    )
    if device.type == "cuda":
        print(f"  GPU memory allocated: {torch.cuda.memory_allocated(device) / 2**30:.1f} GiB", flush=True)
    sample = case["smoke_sample" if args.smoke else "sample"]
    inputs = _inputs(model, case["inputs"], sample, 1, device)
    visual = adapter_for(model).visual_mask(model, inputs["input_ids"], None)[0].nonzero().flatten()
    n_tokens, n_visual = inputs["input_ids"].shape[1], len(visual)
    before, after = gp.flops(model.config, method, n_tokens, n_visual)
    result = dict(
        case=name,
        model_class=type(model).__name__,
        parameters=params,
        build_s=build_s,
        layers=layers,
        tokens=n_tokens,
        visual=n_visual,
        flops=dict(before=before, after=after, fraction=after / before),
        batches=[],
    )
    pruned = shared_copy(model)
    start = time.perf_counter()
    compile_mode = dict(compile="reduce-overhead") if args.graph_replay else {}
    optimized = _optional(f"{name} gp.optimize", lambda: gp.optimize(pruned, method, **compile_mode)) is not None
    result["optimize_s"] = time.perf_counter() - start if optimized else None
    print(f"  gp.optimize: {seconds_text(result['optimize_s'])}", flush=True)
    models = {"a": model, "b": pruned} if optimized else {"a": model}
    original = None
    if case["original"] and not args.graph_replay:  # the original code: LLaVA, batch 1, one image span
        original = OriginalFastV(model, method.k, method.keep, int(visual[0]), n_visual, compile=False)
    try:
        with torch.no_grad():
            calls = {key: lambda m=m: m(**inputs, use_cache=True, logits_to_keep=1) for key, m in models.items()}
            if original is not None:
                calls["c"] = lambda: original(inputs["input_ids"], inputs["pixel_values"])
            for key, fn in list(calls.items()):
                if _optional(f"{name} first prefill of {VARIANTS[key]}", fn) is None and key != "a":
                    del calls[key]  # the others go on
            result["sdpa_kernels"] = {
                key: _optional(
                    f"{name} SDPA kernels of {VARIANTS[key]}", sdpa_kernels, fn, device, heads, head_dim, layers
                )
                for key, fn in calls.items()
            }
            if optimized:
                result["kept_visual"] = _optional(f"{name} explain", lambda: len(gp.explain(pruned, **inputs).kept[0]))
        batch1_s, batch1 = timed(lambda: time_batch(models, inputs, original, args, sync, f"{name} batch 1"), sync)
        result["batches"].append(batch1)
        # batch 8 (a, b) if twice batch 1's time still leaves the later cases their estimated time
        if args.batch8 and time.perf_counter() + 2 * batch1_s < deadline:
            inputs8 = _inputs(model, case["inputs"], sample, 8, device)
            result["batches"].append(time_batch(models, inputs8, None, args, sync, f"{name} batch 8"))
        elif args.batch8:
            print(f"  {name}: batch 8 skipped (time budget)", flush=True)
    finally:
        if optimized:
            gp.restore(pruned)
    result["wall_s"] = time.perf_counter() - started
    return result


def _write(results: list, header: dict, args) -> None:
    paths = [Path(os.environ["OUT"]) / "gpu_suite.json"] if os.environ.get("OUT") else []
    paths += [args.json] if args.json else []
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(header, results=results), indent=2, default=str))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny fp32 shapes, to check the script end to end")
    parser.add_argument("--device", default=None, help="default: cuda (cpu only with --smoke)")
    parser.add_argument(
        "--case", "--cases", nargs="+", choices=list(CASES), default=list(CASES), help="default: all, in this order"
    )
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 7; smoke 2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="decode length (default 32; smoke 4)")
    parser.add_argument("--no-batch8", dest="batch8", action="store_false", help="batch 1 only")
    parser.add_argument("--budget-s", type=float, help="time budget for all cases (default 420; smoke: none)")
    parser.add_argument(
        "--graph-replay", action="store_true", help="generate over HF's static cache, decode steps under CUDA graphs"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device or "cuda")
    if device.type != "cuda" and not args.smoke:
        parser.error("the full shapes need a CUDA GPU; use --smoke for a CPU run")
    args.repeats = args.repeats or (2 if args.smoke else 7)
    args.new_tokens = args.new_tokens or (4 if args.smoke else 32)
    if args.budget_s is None:  # the estimates are an H100's: a smoke run has no budget unless given one
        args.budget_s = math.inf if args.smoke else 420.0
    if args.repeats < 1 or args.new_tokens < 2:
        parser.error("--repeats must be >= 1 and --new-tokens >= 2")
    dtype = torch.float32 if args.smoke else torch.float16
    header = dict(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        device=device_name(device),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        transformers=transformers.__version__,
        graphprune=gp.__version__,
        python=platform.python_version(),
        smoke=args.smoke,
        dtype=str(dtype),
        repeats=args.repeats,
        new_tokens=args.new_tokens,
        graph_replay=args.graph_replay,
    )
    print("gpu_suite: " + ", ".join(f"{k} {v}" for k, v in header.items()), flush=True)
    start, results, failed, skipped = time.perf_counter(), [], [], []
    extra = GRAPH_REPLAY_EXTRA_S if args.graph_replay else 0
    estimates = {name: CASES[name]["estimate_s"] + extra for name in args.case}
    for index, name in enumerate(args.case):
        left = start + args.budget_s - time.perf_counter()
        if estimates[name] > left:  # a whole case that would not fit: left out, said so
            reason = f"time budget: estimated {estimates[name]} s on an H100, {max(left, 0):.0f} s left"
            print(f"\ngpu_suite: {name} skipped ({reason})", flush=True)
            skipped.append(name)
            results.append(dict(case=name, skipped=reason))
            _write(results, header, args)
            continue
        # batch 8 may use what the later cases' estimates leave of the budget
        deadline = start + args.budget_s - sum(estimates[later] for later in args.case[index + 1 :])
        try:
            results.append(run_case(name, args, device, dtype, deadline))
            print(report(results[-1], args.new_tokens), flush=True)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            results.append(dict(case=name, error=traceback.format_exc()))
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _write(results, header, args)
    header["wall_s"] = time.perf_counter() - start
    print(summary(results), flush=True)
    _write(results, header, args)
    done = len(results) - len(failed) - len(skipped)
    print(f"\ngpu_suite: {done} of {len(results)} cases done in {header['wall_s']:.0f} s", flush=True)
    if skipped:
        print(f"gpu_suite: skipped (time budget): {', '.join(skipped)}", flush=True)
    if failed:
        print(f"gpu_suite: FAILED cases: {', '.join(failed)}", flush=True)
    return dict(header, results=results)


if __name__ == "__main__":
    main()
