"""ONNX Runtime prefill: graphprune's pruned export vs the unpruned export of the same model, side by side.

One random-weight model (LLaVA, LLaVA-NeXT, Qwen2-VL or Video-LLaVA shaped, by preset) is optimised with
``FastV(k, keep)`` and exported twice with ``graphprune.export.onnx``: pruned (the ranking, top-k and
gather nodes inside ``prefill.onnx``) and ``prune=False`` (the same decoder captured without the
pass). Both ``prefill.onnx`` files run in ONNX Runtime on the same inputs (``OrtGenerator.prefill_inputs``
of the pruned export: its vision and embed graphs, and the host's positions); each round runs both,
alternating which goes first, and the median over rounds is reported. Also: file sizes, peak
resident memory of a process that loads one ``prefill.onnx`` and runs it once (minus that of a
process that only imports ONNX Runtime), the last-token logits of both (they differ: the pruned
model drops visual tokens), and the theoretical FLOPs fraction (``gp.flops``, the FastV paper's
count). Target: pruned <= 1.1 x (FLOPs fraction x unpruned).

    python benchmarks/onnx.py                       # CPU preset (LLaVA), about a minute
    python benchmarks/onnx.py --preset qwen2-vl-cpu video-llava-cpu llava-next-cpu
    python benchmarks/onnx.py --repeats 15 --threads 2 --json onnx.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# run from a checkout without installing; and this file's folder off the path, or it shadows the onnx package
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]

import graphprune as gp  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    llava_inputs,
    llava_next_inputs,
    qwen2_vl_inputs,
    rounds,
    tiny_llava,
    tiny_llava_next,
    tiny_qwen2_vl,
    tiny_video_llava,
    video_llava_inputs,
)
from graphprune.models import adapter_for  # noqa: E402

_DECODER = dict(hidden_size=768, intermediate_size=2048, num_layers=6, num_heads=12, vocab_size=1024)
# Each: the tiny builder and its arguments, the inputs builder and one sample in its format; 24 text
# tokens before the visual ones, 40 after.
PRESETS = {
    # LLaVA-1.5 shaped: one 336 px image = 576 visual tokens
    "cpu-small": dict(
        build=tiny_llava,
        model=dict(**_DECODER, num_kv_heads=12, image_size=336, patch_size=14),
        inputs=llava_inputs,
        sample=(24, 1, 40),
    ),
    # Qwen2-VL shaped (GQA 12/2, M-RoPE): one 672x672 image, 48x48 patches merged 2x2 = 576 visual tokens
    "qwen2-vl-cpu": dict(
        build=tiny_qwen2_vl,
        model=dict(**_DECODER, num_kv_heads=2, mrope_section=(8, 12, 12), patch_size=14, version="2"),
        inputs=qwen2_vl_inputs,
        sample=(24, [(48, 48)], [], 40),
    ),
    # LLaVA-NeXT shaped: one 336x336 image on 168 px crops, a 2x2 grid: 144 + 576 + 24 newlines = 744 visual tokens
    "llava-next-cpu": dict(
        build=tiny_llava_next,
        model=dict(**_DECODER, num_kv_heads=12, image_size=168, patch_size=14),
        inputs=llava_next_inputs,
        sample=(24, [(336, 336)], 40),
    ),
    # Video-LLaVA shaped: one 8-frame video of 112 px frames = 8 x (64 + 1) = 520 visual tokens
    "video-llava-cpu": dict(
        build=tiny_video_llava,
        model=dict(**_DECODER, num_kv_heads=12, image_size=112, patch_size=14),
        inputs=video_llava_inputs,
        sample=(24, 0, 1, 40),
    ),
}

# VmHWM, not ru_maxrss: the latter keeps the (large) parent's figure across fork and exec
_PEAK = """
import sys, numpy as np, onnxruntime as ort
if sys.argv[1] != "-":
    options = ort.SessionOptions(); options.intra_op_num_threads = int(sys.argv[3])
    session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(sys.argv[2]))
    session.run(["logits"], {i.name: feeds[i.name] for i in session.get_inputs()})
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
"""


def _peak_mib(model_path: str, feeds_path: str, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, model_path, feeds_path, str(threads)], capture_output=True, check=True
    )
    return int(out.stdout.decode().strip()) / 1024  # VmHWM is in KiB


def run(args, preset_name: str) -> dict:
    import onnxruntime as ort

    preset = PRESETS[preset_name]
    method = gp.FastV(k=args.k, keep=args.keep)
    model = gp.optimize(preset["build"](**preset["model"]), method)
    inputs = preset["inputs"](model, [preset["sample"]])
    n_tokens = inputs["input_ids"].shape[1]
    n_visual = int(adapter_for(model).visual_mask(model, inputs["input_ids"], None).sum())
    flops_before, flops_after = gp.flops(model.config, method, n_tokens, n_visual)
    work = Path(tempfile.mkdtemp(prefix="graphprune-onnx-bench-"))
    start = time.perf_counter()
    folders = {
        name: gp.export.onnx(model, work / name, example_inputs=inputs, prune=prune, validate=args.validate)
        for name, prune in (("pruned", True), ("unpruned", False))
    }
    export_s = time.perf_counter() - start

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {
        name: ort.InferenceSession(str(folder / "prefill.onnx"), options, providers=["CPUExecutionProvider"])
        for name, folder in folders.items()
    }
    values = gp.export.OrtGenerator(folders["pruned"]).prefill_inputs(**inputs)
    kept = len(values["graphprune_slots"])
    feeds = {name: {i.name: values[i.name] for i in session.get_inputs()} for name, session in sessions.items()}
    logits = {name: session.run(["logits"], feeds[name])[0] for name, session in sessions.items()}  # warm-up
    runs = {name: lambda name=name: sessions[name].run(["logits"], feeds[name]) for name in sessions}
    times = {
        name: [1e3 * t for t in seconds]
        for name, seconds in rounds(runs, lambda: None, args.repeats, "prefill", alternate=True).items()
    }

    np.savez(work / "feeds.npz", **values)
    baseline = _peak_mib("-", "-", args.threads)
    peaks = {
        name: _peak_mib(str(folder / "prefill.onnx"), str(work / "feeds.npz"), args.threads) - baseline
        for name, folder in folders.items()
    }
    sizes = {
        name: {path.name: path.stat().st_size for path in folder.iterdir() if path.suffix in (".onnx", ".data")}
        for name, folder in folders.items()
    }
    shutil.rmtree(work)
    medians = {name: statistics.median(values) for name, values in times.items()}
    fraction = flops_after / flops_before
    return dict(
        date=time.strftime("%Y-%m-%d"),
        preset=preset_name,
        model_class=type(model).__name__,
        machine=f"{platform.processor() or platform.machine()}, {args.threads} ORT threads",
        versions=dict(onnxruntime=ort.__version__, python=platform.python_version()),
        method=dict(k=method.k, keep=method.keep, query=method.query),
        model=preset["model"],
        tokens=dict(sequence=n_tokens, visual=n_visual, kept_sequence=kept),
        export_s=round(export_s, 1),
        prefill_ms={name: dict(median=medians[name], min=min(t), max=max(t)) for name, t in times.items()},
        ratio=medians["pruned"] / medians["unpruned"],
        flops=dict(before=flops_before, after=flops_after, fraction=fraction),
        target=1.1 * fraction,
        peak_rss_mib=peaks,
        file_bytes=sizes,
        logits_max_abs_difference=float(np.abs(logits["pruned"] - logits["unpruned"]).max()),
    )


def report(result: dict) -> str:
    ms, peaks, sizes = result["prefill_ms"], result["peak_rss_mib"], result["file_bytes"]
    rows = [
        f"| {name} | {ms[name]['median']:.1f} ({ms[name]['min']:.0f}-{ms[name]['max']:.0f}) | "
        f"{ms[name]['median'] / ms['unpruned']['median']:.3f} | {sizes[name]['prefill.onnx'] / 2**20:.1f} | "
        f"{sum(sizes[name].values()) / 2**20:.1f} | {peaks[name]:.0f} |"
        for name in ("unpruned", "pruned")
    ]
    verdict = "PASS" if result["ratio"] <= result["target"] else "FAIL"
    tokens = result["tokens"]
    return "\n".join(
        [
            f"ONNX Runtime prefill, preset {result['preset']} ({result['model_class']}; {result['machine']}), "
            f"{tokens['sequence']} tokens of which {tokens['visual']} visual -> {tokens['kept_sequence']} kept "
            f"from layer {result['method']['k']}",
            "| export | prefill ms median (min-max) | vs unpruned | prefill.onnx MiB | all .onnx MiB | peak RSS MiB |",
            "|---|---|---|---|---|---|",
            *rows,
            f"FLOPs (paper count): {result['flops']['before'] / 1e9:.1f} -> {result['flops']['after'] / 1e9:.1f} "
            f"GFLOP, fraction {result['flops']['fraction']:.3f}",
            f"target pruned <= 1.1 x fraction = {result['target']:.3f}: ratio {result['ratio']:.3f} {verdict}",
            f"export time (both, with validation={result.get('validated')}): {result['export_s']} s",
        ]
    )


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), nargs="+", default=["cpu-small"], help="one or more")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--validate", action="store_true", help="validate both exports against PyTorch (slower)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file (a list, one per preset)")
    args = parser.parse_args(argv)
    results = []
    for preset in args.preset:
        results.append(run(args, preset) | {"validated": args.validate})
        print(report(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
