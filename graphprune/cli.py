"""``graphprune`` on the command line (``python -m graphprune ...``)."""

from __future__ import annotations

import argparse
import logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="graphprune", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what capture and the passes do")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="optimise a small built-in LLaVA-shaped model and show the effect")
    demo.add_argument(
        "--model", choices=["llava", "mllama"], default="llava", help="llava: FastV; mllama: CrossAttentionTrim"
    )
    demo.add_argument("--k", type=int, default=2, help="FastV: first pruned layer (default 2)")
    demo.add_argument("--keep", type=float, default=0.5, help="fraction of visual tokens/features kept (default 0.5)")
    demo.add_argument("--query", choices=["last", "mean"], default="last", help="FastV: the ranking row(s)")
    demo.add_argument("--select", choices=["head_union", "topk"], default="head_union", help="CrossAttentionTrim")
    export = commands.add_parser(
        "export",
        help="export a tiny random-weight demo model (FastV: LLaVA, Video-LLaVA, Qwen2-VL, Qwen2.5-VL; "
        "CrossAttentionTrim: Mllama) for ONNX Runtime or TensorRT",
        description="Export one of graphprune's tiny random-weight demo models, optimised with FastV (LLaVA, "
        "Video-LLaVA, Qwen2-VL, Qwen2.5-VL) or CrossAttentionTrim (Mllama, select='topk', the exportable one), and "
        "check ONNX Runtime's greedy tokens against PyTorch. For your own model, call "
        "graphprune.export.onnx(model, out_dir, example_inputs=...) from Python.",
    )
    export.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx", help="default onnx")
    export.add_argument("--out", required=True, help="folder to write (must not exist unless --overwrite)")
    export.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    export.add_argument(
        "--model",
        choices=["llava", "video-llava", "qwen2-vl", "qwen2.5-vl", "mllama"],
        default="llava",
        help="llava, video-llava, qwen2-vl, qwen2.5-vl: FastV; mllama: CrossAttentionTrim topk",
    )
    export.add_argument("--k", type=int, default=2, help="FastV: first pruned layer (default 2)")
    export.add_argument("--keep", type=float, default=0.5, help="fraction of visual tokens/features kept (default 0.5)")
    export.add_argument("--query", choices=["last", "mean"], default="last", help="FastV: the ranking row(s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.command == "demo":
        from .demo import run, run_mllama

        if args.model == "mllama":
            return 0 if run_mllama(keep=args.keep, select=args.select) else 1
        return 0 if run(k=args.k, keep=args.keep, query=args.query) else 1
    if args.command == "export":
        from .export.demo import demo
        from .methods import CrossAttentionTrim, FastV

        if args.model == "mllama":
            method = CrossAttentionTrim(keep=args.keep, select="topk")
        else:
            method = FastV(k=args.k, keep=args.keep, query=args.query)
        return 0 if demo(args.out, args.format, method, args.model, overwrite=args.overwrite) else 1
    return 2
