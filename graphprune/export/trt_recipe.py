"""The TensorRT build recipe written next to the ONNX files: ``build_engines.sh`` (trtexec) and ``TENSORRT.md``.

TensorRT engines are specific to the GPU and the TensorRT version, so for a Jetson Orin the engines
are built on the device (JetPack 6 ships TensorRT 10) from the ONNX files and these shapes.
"""

from __future__ import annotations

from pathlib import Path

from .family import export_family
from .jetson import jetson_sections
from .manifest import Manifest
from .trt_profiles import trt_profiles

SCRIPT, GUIDE = "build_engines.sh", "TENSORRT.md"
PRECISION = {  # trtexec's precision flag per export dtype, and what it builds
    "float16": (
        "--stronglyTyped",
        "this export is float16, and `--stronglyTyped` (TensorRT 10) builds each layer in the graph's own "
        "type: float16, except the visual-token ranking, which the graph computes in float32.",
    ),
    "float32": (
        "--fp16",
        "this export is float32; `--fp16` lets TensorRT run any layer in float16, the ranking included. "
        "Export a float16 model (`model.half()`) to keep the ranking in float32 on TensorRT.",
    ),
}


def _shapes(inputs: dict, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, shapes[which]))}" for name, shapes in inputs.items())


def trt_recipe(manifest: Manifest, folder: Path, fit: dict) -> list[Path]:
    """Write ``build_engines.sh`` and ``TENSORRT.md`` for ``manifest``'s graphs into ``folder``; their paths.
    ``fit``: ``trt_parser.export_fit``'s verdicts, for the JetPack section."""
    profiles = trt_profiles(manifest)
    precision, precision_note = PRECISION[manifest.dtype]
    lines = [
        "#!/usr/bin/env bash",
        "# Build fp16 TensorRT engines from this export, on the device that will run them",
        "# (Jetson Orin: JetPack 6, TensorRT 10). Written by graphprune; see TENSORRT.md.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-/usr/src/tensorrt/bin/trtexec}"',
    ]
    for graph, inputs in profiles.items():
        lines += [
            f'"$TRTEXEC" --onnx={manifest.graphs[graph]["file"]} --saveEngine={graph}.engine {precision} \\',
            f"  --minShapes={_shapes(inputs, 0)} \\",
            f"  --optShapes={_shapes(inputs, 1)} \\",
            f'  --maxShapes={_shapes(inputs, 2)} "$@"',
        ]
    script = folder / SCRIPT
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    family = export_family(manifest.family, f"graphprune has no TensorRT recipe for {manifest.family!r} exports")
    pruning, visual, cache = family.recipe_notes(manifest)
    rows = "\n".join(
        f"| {graph} | `{name}` | " + " | ".join(" x ".join(map(str, shape)) for shape in shapes) + " |"
        for graph, inputs in profiles.items()
        for name, shapes in inputs.items()
    )
    guide = f"""# TensorRT engines for this export (Jetson Orin, JetPack 6 / TensorRT 10)

Pruning: {pruning}
Visual budget: {visual}.

TensorRT engines only run on the GPU model and TensorRT version they were built with, so build
them on the Jetson itself (JetPack 6.x ships TensorRT 10.3 with `trtexec` in `/usr/src/tensorrt/bin`):

```bash
./build_engines.sh                       # one fp16 engine per graph ({precision}): {", ".join(profiles)}
./build_engines.sh --memPoolSize=workspace:2048 --builderOptimizationLevel=3   # extra flags go to every trtexec
TRTEXEC=/path/to/trtexec ./build_engines.sh
```

Precision: {precision_note}

Each engine gets one optimisation profile (batch 1 to {profiles["prefill"]["inputs_embeds"][2][0]}; edit the
shapes in `build_engines.sh` for other ranges, keeping `total = past + new_tokens` and the pruned lengths
at most the unpruned ones):

| graph | input | min | opt | max |
|---|---|---|---|---|
{rows}

The generation loop is the one `graphprune.export.OrtGenerator` runs (see its source): {" → ".join(profiles)},
the last once per new token, feeding each step's `present.*` back as `past.*`.{cache}

Weights: every `.onnx` keeps its weights in the one `weights.bin` beside it (ONNX external data, each
weight stored once), so copy the whole folder. trtexec and TensorRT's ONNX parser read `weights.bin`
from the model file's folder while building; each engine then holds its own copy of the weights it
uses (the prefill and decode engines both hold the decoder: for a 7B decoder in fp16 that is twice
13.5 GB, more than a Jetson Orin 32 GB holds) and `weights.bin` is not needed to run them.

Without writing that loop, ONNX Runtime
can use TensorRT directly: install `onnxruntime-gpu` (NVIDIA's Jetson wheel for JetPack 6) and pass
`providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"]` to `OrtGenerator`.
"""
    (folder / GUIDE).write_text(guide + jetson_sections(fit))
    return [script, folder / GUIDE]
