"""``graphprune`` on the command line (``python -m graphprune ...``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from .cli_checkpoint import (
    add_checkpoint_options,
    add_sweep_command,
    is_preset,
    preset_method,
    run_explain,
    run_export,
    run_sweep,
)
from .export.demo import demo_names
from .export.trt_tables import DEFAULT as TRT_DEFAULT
from .export.trt_tables import TABLES as TRT_TABLES

METHOD_OPTIONS = ("k", "keep", "query", "select")  # the method options that the commands may take


class _Parser(argparse.ArgumentParser):
    """argparse, with every error on one line of stderr (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="graphprune", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what capture and the passes do")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="optimise a small built-in LLaVA-shaped model and show the effect")
    demo.add_argument(
        "--model", choices=["llava", "mllama"], default="llava", help="llava: FastV; mllama: CrossAttentionTrim"
    )
    demo.add_argument("--k", type=int, help="FastV: first pruned layer (default 2)")
    demo.add_argument("--keep", type=float, help="fraction of visual tokens/features kept (default 0.5)")
    demo.add_argument("--query", choices=["last", "mean"], help="FastV: the ranking row(s) (default last)")
    demo.add_argument("--select", choices=["head_union", "topk"], help="CrossAttentionTrim (default head_union)")
    explain = commands.add_parser(
        "explain",
        help="show which visual tokens a checkpoint or a demo model keeps for your image, as a PNG",
        description="Run one pruned prefill of --model (a checkpoint: hub id or local folder, its processor making "
        "the inputs from --image and --prompt; or a demo preset with random weights, whose choice is the method's, "
        "not a trained model's, the image resized and normalised to its input size), print the report and save a PNG "
        "of the image under the grid of its kept visual tokens (Mllama: features per tile).",
    )
    explain.add_argument("--image", required=True, help="an image file Pillow reads (PNG, JPEG, ...)")
    explain.add_argument("--out", default="kept.png", help="the PNG to write (default kept.png)")
    explain.add_argument(
        "--model",
        default="llava",
        help="a hub id or a local checkpoint folder, or a demo preset: llava (FastV), mllama (CrossAttentionTrim)",
    )
    explain.add_argument("--k", type=int, help="FastV: first pruned layer (default 2)")
    explain.add_argument("--keep", type=float, help="fraction of visual tokens/features kept (default 0.5)")
    explain.add_argument("--query", choices=["last", "mean"], help="FastV: the ranking row(s) (default last)")
    explain.add_argument("--select", choices=["head_union", "topk"], help="CrossAttentionTrim (default head_union)")
    add_checkpoint_options(explain)
    export = commands.add_parser(
        "export",
        help="export a checkpoint (hub id or local folder) or a tiny random-weight demo model for ONNX Runtime or "
        "TensorRT",
        description="Export --model, a checkpoint (hub id or local folder: example inputs made by its processor from "
        "--image and --prompt) or one of graphprune's tiny random-weight demo models, optimised with --method (or "
        "--k/--keep/--query; demo presets: CrossAttentionTrim select='topk' for mllama, FastV for the others), and "
        "check ONNX Runtime's greedy tokens against PyTorch.",
    )
    export.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx", help="default onnx")
    export.add_argument(
        "--trt",
        choices=list(TRT_TABLES),
        help=f"ONNX: the TensorRT version whose parser rules every graph must pass (default {TRT_DEFAULT}: "
        + ", ".join(f"{version}: {table['jetpack']}" for version, table in TRT_TABLES.items())
        + ")",
    )
    export.add_argument("--out", required=True, help="folder to write (must not exist unless --overwrite)")
    export.add_argument(
        "--overwrite", action="store_true", help="replace --out if it is an empty folder or a graphprune export"
    )
    export.add_argument(
        "--model",
        default="llava",
        help="a hub id or a local checkpoint folder, or a demo preset (mllama: CrossAttentionTrim topk; the others: "
        f"FastV): {', '.join(demo_names())}",
    )
    export.add_argument("--k", type=int, help="FastV: first pruned layer (default 2)")
    export.add_argument("--keep", type=float, help="fraction of visual tokens/features kept (default 0.5)")
    export.add_argument("--query", choices=["last", "mean"], help="FastV: the ranking row(s) (default last)")
    verify = commands.add_parser(
        "verify",
        help="check an ONNX export's files against the sizes and checksums in its manifest.json",
        description="Check every file of a folder written by graphprune.export.onnx: its size and sha256, and each "
        "weight tensor's sha256, against its manifest.json. Prints each damaged file or tensor; exit status 1 if any.",
    )
    verify.add_argument("path", help="the export folder")
    add_checkpoint_options(export)
    export.add_argument("--image", help="a checkpoint's example image (default: a random picture)")
    sweep = add_sweep_command(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.command == "demo":
        from .demo import LLAVA, run, run_mllama

        method = _method(demo, args, LLAVA["num_layers"])
        return 0 if {"llava": run, "mllama": run_mllama}[args.model](method) else 1
    if args.command == "verify":
        return _verify(verify, Path(args.path))
    if args.command == "sweep":
        return run_sweep(sweep, args)
    if args.command == "explain":
        from .demo import LLAVA, explain_image

        if not is_preset(args.model, ("llava", "mllama")):
            return run_explain(explain, args)
        method = _method(explain, args, LLAVA["num_layers"])
        try:
            from PIL import Image

            Image.open(args.image).verify()
            import matplotlib  # noqa: F401
        except ImportError as error:
            explain.error(f"needs {error.name}: pip install 'graphprune[plot]'")
        except OSError as error:
            explain.error(f"cannot read --image {args.image}: {error}")
        explain_image(args.image, args.model, method, args.out)
        return 0
    from .export.demo import FASTV_LAYERS
    from .export.demo import demo as export_demo
    from .export.staging import writable_folder
    from .export.tensorrt_export import require_tensorrt
    from .export.trt_parser import TensorRTSupportError

    preset = is_preset(args.model, demo_names())
    method = _method(export, args, FASTV_LAYERS, select="topk") if preset else None
    try:
        writable_folder(args.out, args.overwrite, flag="--overwrite")
        if args.format == "tensorrt":
            if args.trt is not None:
                raise RuntimeError("--trt checks ONNX graphs: it goes with --format onnx")
            require_tensorrt()
    except (FileExistsError, ImportError, RuntimeError) as error:
        export.error(str(error))
    trt = args.trt or TRT_DEFAULT
    if not preset:
        return run_export(export, args, trt)
    try:
        return 0 if export_demo(args.out, args.format, method, args.model, args.overwrite, trt) else 1
    except TensorRTSupportError as error:
        export.error(str(error))


def _verify(parser: argparse.ArgumentParser, folder: Path) -> int:
    """``graphprune verify``: 0 if every file of the export in ``folder`` matches its manifest, 1 (each problem on
    stderr) if not; ``parser.error`` where there is no manifest with checksums to check against."""
    from .export.integrity import problems, unverifiable
    from .export.manifest import FILE, Manifest

    try:
        manifest = Manifest.read(folder)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    reason = unverifiable(folder, manifest)
    if reason:
        parser.error(reason)
    found = problems(folder, manifest, checksums=True)
    for problem in found:
        print(f"{parser.prog}: {folder}: {problem}", file=sys.stderr)
    if found:
        return 1
    tensors = sum(len(record.get("tensors", ())) for record in manifest.files.values())
    print(f"{folder}: OK: {len(manifest.files)} files and {tensors} weight tensors match {FILE}")
    return 0


def _method(parser: argparse.ArgumentParser, args: argparse.Namespace, fastv_layers: int, **trim_fixed):
    """The method that ``args`` ask for, checked before any model is built (FastV's k against the demo
    model's ``fastv_layers``); else ``parser.error``, also for one method's options given to the other."""
    from .methods import CrossAttentionTrim, FastV

    if getattr(args, "method", None):
        return preset_method(parser, args, fastv_layers)
    method_type = CrossAttentionTrim if args.model == "mllama" else FastV
    own = [field.name for field in dataclasses.fields(method_type)]
    wrong = [name for name in METHOD_OPTIONS if name not in own and getattr(args, name, None) is not None]
    if wrong:
        options = ", ".join(f"--{name}" for name in own if hasattr(args, name))
        parser.error(
            f"--{wrong[0]} is not an option of {method_type.__name__}, which --model {args.model} runs ({options})"
        )
    given = {name: getattr(args, name) for name in own if getattr(args, name, None) is not None}
    try:
        method = method_type(**given, **(trim_fixed if method_type is CrossAttentionTrim else {}))
        if method_type is FastV:
            method.check_layers(fastv_layers)
    except ValueError as error:
        parser.error(str(error))
    return method
