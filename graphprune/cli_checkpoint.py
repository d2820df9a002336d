"""The command line on your own checkpoint (a hub id or a local folder): ``graphprune explain`` / ``export --model
CHECKPOINT`` and ``graphprune sweep``. ``cli.py`` registers these; the demo models stay named presets there."""

from __future__ import annotations

import argparse
from pathlib import Path

from .checkpoints import DTYPES, CheckpointError
from .fidelity.samples import DEFAULT_PROMPT
from .method_strings import EXAMPLE, parse_method, parse_methods

METHOD_FLAGS = ("k", "keep", "query", "select")  # the single-option flags that --method replaces


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--dtype`` and ``--prompt``, for a command whose ``--model`` may be a checkpoint."""
    parser.add_argument(
        "--method",
        help=f'the method as one string, e.g. "{EXAMPLE}" or "trim:keep=0.5,select=topk" (instead of --k/--keep/...)',
    )
    parser.add_argument("--dtype", choices=list(DTYPES), help="a checkpoint's weights in this dtype (default: its own)")
    parser.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help=f"a checkpoint's prompt text (default {DEFAULT_PROMPT!r})"
    )


def is_preset(name: str, presets) -> bool:
    """Whether ``--model name`` is a demo preset: one of ``presets`` and no folder of that name here."""
    return name in presets and not Path(name).exists()


def preset_method(parser: argparse.ArgumentParser, args: argparse.Namespace, fastv_layers: int):
    """A preset's ``--method`` (``--model mllama``: CrossAttentionTrim, the others FastV, with k checked against
    the preset's ``fastv_layers``), refused beside --k/--keep/...; else ``parser.error``."""
    method = _parsed(parser, args)
    expected = "CrossAttentionTrim" if args.model == "mllama" else "FastV"
    if type(method).__name__ != expected:
        parser.error(f"--model {args.model} runs {expected}; --method {args.method!r} is {type(method).__name__}")
    _check_layers(parser, method, fastv_layers)
    return method


def run_explain(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``graphprune explain --model CHECKPOINT``: one pruned prefill on ``--image``, printed and drawn."""
    from .checkpoints import processor_inputs
    from .explain import explain
    from .runtime import optimize

    image = _image(parser, args.image)
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        parser.error(f"needs {error.name}: pip install 'graphprune[plot]'")
    model, processor, method = _load(parser, args)
    inputs = processor_inputs(model, processor, [args.prompt], [[image]])
    try:
        optimize(model, method)
    except ValueError as error:
        parser.error(str(error))
    report = explain(model, **inputs)
    print(report)
    report.plot(args.out)
    print(f"saved {args.out}")
    return 0


def run_export(parser: argparse.ArgumentParser, args: argparse.Namespace, trt_version: str) -> int:
    """``graphprune export --model CHECKPOINT``: the optimized checkpoint exported with example inputs made by its
    processor from ``--image`` (default: a random picture) and ``--prompt``, then checked as the demo export is."""
    from .checkpoints import processor_inputs
    from .export.demo import export_and_check
    from .export.trt_parser import TensorRTSupportError
    from .runtime import optimize
    from .tiny_checkpoints import random_image

    image = _image(parser, args.image) if args.image else random_image(0, 224)
    model, processor, method = _load(parser, args)
    inputs = processor_inputs(model, processor, [args.prompt], [[image]])
    try:
        optimize(model, method)
        return 0 if export_and_check(model, inputs, args.out, args.format, args.overwrite, trt_version) else 1
    except (ValueError, TypeError, TensorRTSupportError) as error:
        parser.error(str(error).strip().splitlines()[0])


def add_sweep_command(commands) -> argparse.ArgumentParser:
    """``graphprune sweep``'s parser."""
    sweep = commands.add_parser(
        "sweep",
        help="how often each method's pruned model says what the unpruned one says on your images, at what FLOPs",
        description="Run each --methods entry against the unpruned --model on the same inputs, greedy, in batches; "
        "write sweep.json, sweep.csv, sweep.png (first-token agreement against the FLOPs fraction, Pareto front "
        "ringed) and kept-<method>.png (the kept visual tokens of the first --pictures samples) into --out.",
    )
    sweep.add_argument("--model", required=True, help="a hub id or a local checkpoint folder")
    sweep.add_argument(
        "--images",
        required=True,
        help='a folder of images (each with --prompt) or a JSONL file of {"image" or "images": ..., "prompt": ...}',
    )
    sweep.add_argument("--methods", required=True, help=f'methods separated by ";", e.g. "{EXAMPLE};fastv:keep=0.25"')
    sweep.add_argument("--out", required=True, help="folder for the results (created; files of these names replaced)")
    sweep.add_argument("--prompt", default=DEFAULT_PROMPT, help=f"the prompt of a folder's images ({DEFAULT_PROMPT!r})")
    sweep.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per sample (default 16)")
    sweep.add_argument("--batch-size", type=int, default=4, help="samples per batch (default 4)")
    sweep.add_argument("--pictures", type=int, default=2, help="samples drawn per method (default 2; 0: none)")
    sweep.add_argument("--dtype", choices=list(DTYPES), help="the weights in this dtype (default: the checkpoint's)")
    sweep.add_argument("--device", help="where the model runs (default: cuda when available, else cpu)")
    return sweep


def run_sweep(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``graphprune sweep``: everything checked before the weights load, then the sweep, its files printed."""
    from .fidelity import load_samples, sweep

    if args.max_new_tokens < 1 or args.batch_size < 1 or args.pictures < 0:
        parser.error("--max-new-tokens and --batch-size must be >= 1, --pictures >= 0")
    try:
        methods = parse_methods(args.methods)
        samples = load_samples(args.images, args.prompt)
        import matplotlib  # noqa: F401
    except ValueError as error:
        parser.error(str(error))
    except ImportError as error:
        parser.error(f"needs {error.name}: pip install 'graphprune[plot]'")
    model, processor, _ = _load(parser, args, methods)
    result = sweep(model, processor, samples, methods, args.max_new_tokens, args.batch_size, args.pictures)
    for path in result.save(args.out, pictures=args.pictures > 0):
        print(f"wrote {path}")
    for row in result.results:
        print(
            f"{row.method:<36} FLOPs {row.flops_fraction:6.1%}  KV {row.kv_fraction:6.1%}  "
            f"first token {row.first_token_agreement:6.1%}  sequence {row.sequence_agreement:6.1%}  "
            f"tokens {row.token_agreement:6.1%}  KL {row.mean_kl:.4f}  rank {row.mean_rank:.2f} (max {row.max_rank})"
        )
    return 0


def _parsed(parser: argparse.ArgumentParser, args: argparse.Namespace):
    flags = [f"--{name}" for name in METHOD_FLAGS if getattr(args, name, None) is not None]
    if flags:
        parser.error(f"give --method or {', '.join(flags)}, not both")
    try:
        return parse_method(args.method)
    except ValueError as error:
        parser.error(str(error))


def _check_layers(parser: argparse.ArgumentParser, method, num_layers: int) -> None:
    if hasattr(method, "check_layers"):  # FastV, DART, PDrop: their layers against the checkpoint's count
        try:
            method.check_layers(num_layers)
        except ValueError as error:
            parser.error(str(error))


def _load(parser: argparse.ArgumentParser, args: argparse.Namespace, methods=None):
    """``(model, processor, method)`` of ``args``: the methods (``methods``, else ``--method`` or the family's
    method from --k/--keep/...) checked against the checkpoint's config before its weights load."""
    from .checkpoints import load, load_config, model_class
    from .models import adapters

    try:
        config = load_config(args.model)
        family = next(adapter for adapter in adapters() if model_class(config).__name__ in adapter.model_classes)
    except CheckpointError as error:
        parser.error(str(error))
    if methods is None:
        given = {name: getattr(args, name) for name in METHOD_FLAGS if getattr(args, name, None) is not None}
        try:
            methods = [_parsed(parser, args) if args.method else family.methods[0](**given)]
        except (TypeError, ValueError) as error:  # TypeError: a flag of another method
            accepted = ", ".join(family.methods[0].__dataclass_fields__)
            parser.error(f"{family.name} runs {family.methods[0].__name__} ({accepted}): {error}")
    num_layers = config.get_text_config(decoder=True).num_hidden_layers
    for method in methods:
        if type(method) not in family.methods:
            runs = ", ".join(kind.__name__ for kind in family.methods)
            parser.error(f"{family.name} checkpoints run {runs}; got {type(method).__name__}")
        _check_layers(parser, method, num_layers)
    try:
        device = (args.device or _default_device()) if hasattr(args, "device") else None  # explain/export: CPU
        model, processor = load(args.model, args.dtype, device)
    except CheckpointError as error:
        parser.error(str(error))
    return model, processor, methods[0]


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _image(parser: argparse.ArgumentParser, path: str):
    try:
        from PIL import Image

        return Image.open(path).convert("RGB")
    except ImportError as error:
        parser.error(f"needs {error.name}: pip install 'graphprune[plot]'")
    except OSError as error:
        parser.error(f"cannot read --image {path}: {error}")
