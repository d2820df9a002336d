"""ONNX Runtime prefill: graphprune's pruned export vs the unpruned export of the same model, side by side.

One random-weight LLaVA-shaped model is optimised with ``FastV(k, keep)`` and exported twice with
``graphprune.export.onnx``: pruned (the ranking, top-k and gather nodes inside ``prefill.onnx``)
and ``prune=False`` (the same decoder captured without the pass). Both ``prefill.onnx`` files run
in ONNX Runtime on the same embeddings (from the pruned export's ``vision.onnx`` and
``embed.onnx``); each round runs both, alternating which goes first, and the median over rounds is
reported. Also: file sizes, peak resident memory of a process that loads one ``prefill.onnx`` and
runs it once (minus that of a process that only imports ONNX Runtime), the last-token logits of
both (they differ: the pruned model drops visual tokens), and the theoretical FLOPs fraction
(``gp.flops``, the FastV paper's count). Target: pruned <= 1.1 x (FLOPs fraction x unpruned).

    python benchmarks/onnx.py                       # CPU preset, about a minute
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
from graphprune.methods import n_keep  # noqa: E402
from graphprune.tiny import llava_inputs, tiny_llava  # noqa: E402

PRESETS = {
    "cpu-small": dict(
        model=dict(
            hidden_size=768,
            intermediate_size=2048,
            num_layers=6,
            num_heads=12,
            num_kv_heads=12,
            vocab_size=1024,
            image_size=336,
            patch_size=14,
        ),
        text=(24, 40),  # tokens before and after the one image (576 visual tokens)
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


def run(args) -> dict:
    import onnxruntime as ort

    preset = PRESETS[args.preset]
    method = gp.FastV(k=args.k, keep=args.keep)
    model = gp.optimize(tiny_llava(**preset["model"]), method)
    before, after = preset["text"]
    inputs = llava_inputs(model, [(before, 1, after)])
    n_tokens, n_visual = inputs["input_ids"].shape[1], int((inputs["input_ids"] == 3).sum())
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
    generator = gp.export.OrtGenerator(folders["pruned"])
    features = generator._run("vision", {"pixel_values": inputs["pixel_values"].numpy()})["image_features"]
    embedded = generator._run(
        "embed", {"input_ids": inputs["input_ids"].numpy(), "image_features": features.reshape(-1, features.shape[-1])}
    )
    mask = inputs["attention_mask"].numpy()
    kept = n_tokens - (n_visual - n_keep(method.keep, n_visual))
    values = {
        "inputs_embeds": embedded["inputs_embeds"],
        "attention_mask": mask,
        "position_ids": np.maximum(mask.cumsum(-1) - 1, 0),
        "graphprune_visual_mask": embedded["visual_mask"],
        "graphprune_slots": np.arange(kept),
    }
    feeds = {name: {i.name: values[i.name] for i in session.get_inputs()} for name, session in sessions.items()}
    times = {name: [] for name in sessions}
    logits = {name: session.run(["logits"], feeds[name])[0] for name, session in sessions.items()}  # warm-up
    for round_ in range(args.repeats):
        order = list(sessions) if round_ % 2 == 0 else list(reversed(sessions))
        for name in order:
            start = time.perf_counter()
            sessions[name].run(["logits"], feeds[name])
            times[name].append(1e3 * (time.perf_counter() - start))

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
        preset=args.preset,
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
            f"ONNX Runtime prefill, preset {result['preset']} ({result['machine']}), "
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--validate", action="store_true", help="validate both exports against PyTorch (slower)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args) | {"validated": args.validate}
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
