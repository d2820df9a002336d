"""ONNX export of a real-size LLaVA: export time, peak memory and bytes on disk; then OrtGenerator's memory.

A random-weight LLaVA with a ~1B decoder (TinyLlama-1.1B's shape: hidden 2048, MLP 5632, 22 layers,
GQA 32/4, vocab 32000) and the tiny CLIP tower is optimised with ``FastV(k=2, keep=0.5)`` and
exported with ``graphprune.export.onnx`` (validated against PyTorch, as by default). Reported: the
export's wall time, this process's peak resident memory (VmHWM) against the model's parameter bytes,
every file's size, and, in a fresh process, ``OrtGenerator`` creation and a 4-token generate with
its peak resident memory above what the imports took.

    python benchmarks/export_size.py                # ~1.1B parameters, float32: ~4.4 GB on disk
    python benchmarks/export_size.py --layers 4     # a quick run of the same widths
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent
]

import numpy as np  # noqa: E402

import graphprune as gp  # noqa: E402
from benchmarks.harness import llava_inputs, table, tiny_llava  # noqa: E402

ONE_B = dict(hidden_size=2048, intermediate_size=5632, num_heads=32, num_kv_heads=4, vocab_size=32000)
ORT_RUN = """
import json, sys, time
import numpy as np
from graphprune.export.ort_generator import OrtGenerator
def resident(field):
    return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(field + ':'))
arrays = np.load(sys.argv[2]); before, start = resident('VmRSS'), time.perf_counter()
generator = OrtGenerator(sys.argv[1]); loaded = time.perf_counter()
generator.generate(**{n: arrays[n] for n in arrays.files}, max_new_tokens=4)
print(json.dumps({'load_s': loaded - start, 'generate_s': time.perf_counter() - loaded,
                  'peak_above_imports': resident('VmHWM') - before}))
"""


def resident(field: str) -> int:
    """``field`` (VmRSS, VmHWM) of /proc/self/status, in bytes."""
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    start = resident("VmRSS")
    model = tiny_llava(**ONE_B, num_layers=args.layers)
    parameters = sum(p.numel() for p in model.parameters())
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with gp.optimized(model, gp.FastV(k=2, keep=0.5)), tempfile.TemporaryDirectory() as work:
        inputs = llava_inputs(model, [(24, 1, 40)])
        began = time.perf_counter()
        folder = gp.export.onnx(model, Path(work) / "export", example_inputs=inputs)
        seconds = time.perf_counter() - began
        peak = resident("VmHWM") - start
        files = {path.name: path.stat().st_size for path in sorted(folder.iterdir())}
        arrays = Path(work) / "inputs.npz"
        np.savez(arrays, **{name: value.numpy() for name, value in inputs.items()})
        del model
        run = subprocess.run(
            [sys.executable, "-c", ORT_RUN, str(folder), str(arrays)], capture_output=True, text=True, check=True
        )
        ort = json.loads(run.stdout.splitlines()[-1])
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "parameters": parameters,
        "parameter_bytes": parameter_bytes,
        "export_s": seconds,
        "export_peak_rss_above_start": peak,
        "files": files,
        "ort": ort,
    }
    gib = 2**30
    print(f"{parameters / 1e9:.2f}B parameters, {parameter_bytes / gib:.2f} GiB float32")
    print(table(["file", "bytes"], [[name, size] for name, size in files.items()]))
    rows = [
        ["export (validated)", f"{seconds:.0f} s", f"{peak / gib:.2f} GiB ({peak / parameter_bytes:.2f} x weights)"],
        ["folder on disk", "", f"{sum(files.values()) / gib:.2f} GiB"],
        ["OrtGenerator load", f"{ort['load_s']:.1f} s", ""],
        ["generate, 4 tokens", f"{ort['generate_s']:.1f} s", f"{ort['peak_above_imports'] / gib:.2f} GiB peak"],
    ]
    print(table(["step", "time", "memory"], rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
