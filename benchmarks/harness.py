"""What the benchmarks share: sync-aware timing in interleaved rounds, plain-text tables, decoder shapes,
a second module tree over the same weights, and the one import of graphprune's tiny model builders.

Run from a checkout: each benchmark puts the repository root on ``sys.path`` and imports
``benchmarks.harness`` (``benchmarks`` is a namespace package, so ``benchmarks/onnx.py`` never
shadows the ``onnx`` package).
"""

from __future__ import annotations

import copy
import itertools
import platform
import statistics
import time
from collections.abc import Callable

import torch
from transformers import CompileConfig

# The tiny builders and token ids, imported here only (graphprune.testing).
from graphprune.testing import (  # noqa: F401  (re-exported for the benchmarks)
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    QWEN2_VL_TOKEN_IDS,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
    gemma3_inputs,
    idefics3_inputs,
    internvl_inputs,
    llama_text_config,
    llava_inputs,
    llava_next_inputs,
    llava_onevision_inputs,
    qwen2_vl_inputs,
    qwen3_vl_inputs,
    text_config,
    tiny_gemma3,
    tiny_idefics3,
    tiny_internvl,
    tiny_llava,
    tiny_llava_next,
    tiny_llava_onevision,
    tiny_mllama,
    tiny_qwen2_vl,
    tiny_qwen3_vl,
    tiny_video_llava,
    video_llava_inputs,
)

# Decoder shapes (the tiny builders' keyword names). LLaVA-1.5-7B's is Llama-2-7B's (Vicuna); the CPU one
# keeps its proportions (head_dim 128, MHA, intermediate / hidden = 2.69) at a size 2 CPU cores run.
CPU_DECODER = dict(hidden_size=1024, intermediate_size=2752, num_layers=8, num_heads=8, num_kv_heads=8)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32)
# Qwen2-VL-7B's decoder (GQA 28/4, head_dim 128) and its CPU scaling; Qwen2.5-VL-7B has the same one.
QWEN_CPU = dict(hidden_size=1024, intermediate_size=5504, num_layers=8, num_heads=8, num_kv_heads=2)
QWEN_7B = dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4)
MROPE = dict(mrope_section=(16, 24, 24), patch_size=14)


def sync_for(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work: ``torch.cuda.synchronize`` on CUDA, nothing on the CPU."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A second module tree over the same parameter and buffer tensors (and its own configs)."""
    memo = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def cache_bytes(cache) -> int:
    """Bytes of the keys and values held by a ``DynamicCache``."""
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def timed(fn: Callable, sync: Callable[[], None]) -> tuple[float, object]:
    """``fn()``'s wall time in seconds, the device synchronised before and after, and its value."""
    sync()
    start = time.perf_counter()
    value = fn()
    sync()
    return time.perf_counter() - start, value


def rounds(
    callables: dict[str, Callable], sync, repeats: int, label: str, *, alternate: bool = False
) -> dict[str, list[float]]:
    """``repeats`` rounds, each timing every callable once, so that load from elsewhere hits all alike;
    ``alternate`` reverses the order on odd rounds. Seconds per callable, one per round."""
    times = {key: [] for key in callables}
    for round_ in range(repeats):
        order = list(callables)[:: -1 if alternate and round_ % 2 else 1]
        for key in order:
            times[key].append(timed(callables[key], sync)[0])
        print(
            f"  {label}: round {round_ + 1}/{repeats}: "
            + ", ".join(f"{k} {t[-1] * 1e3:.0f} ms" for k, t in times.items()),
            flush=True,
        )
    return times


def measure(
    callables: dict[str, Callable], sync, repeats: int, label: str, names: dict[str, str] | None = None
) -> tuple[dict, dict, dict]:
    """First call of each (compile, warm-up; its time and value kept), a second warm-up, then ``repeats``
    interleaved rounds. Returns (seconds per round, first-call seconds, first-call values) per key."""
    first, outputs = {}, {}
    for key, fn in callables.items():
        print(f"  {label}: first call of {(names or {}).get(key, key)} ...", flush=True)
        first[key], outputs[key] = timed(fn, sync)
        fn()  # second warm-up (autotuning, allocator)
    return rounds(callables, sync, repeats, label), first, outputs


def graph_replay_options(device: torch.device) -> dict:
    """``generate``'s options for HF's low-latency route, the same for the unmodified model and graphprune: HF's
    static cache, its one-token decode steps compiled for graph replay (CUDA graphs on a GPU). HF compiles on a GPU
    only unless told: told here on a CPU, which then compiles the same steps without graphs."""
    config = CompileConfig(fullgraph=True, dynamic=False, mode="reduce-overhead")
    config._compile_all_devices = device.type == "cpu"
    return dict(cache_implementation="static", compile_config=config)


def greedy_generate(model, inputs: dict, new_tokens: int, **options):
    """``model.generate`` of exactly ``new_tokens`` greedy tokens (``options``: more of generate's)."""
    return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **options)


def generate_rounds(
    generates: dict[str, Callable[[int], object]], sync, repeats: int, new_tokens: int, label: str
) -> dict[str, dict[str, list[float]]]:
    """Through ``generate`` (``generates[key](n)`` makes n tokens), interleaved rounds in alternating order:
    per key and round, ``ttft`` (1 token), ``total`` (``new_tokens``) and ``decode`` per new token
    (``(total - ttft) / (new_tokens - 1)``), in seconds."""
    calls = {
        f"{kind}:{key}": (lambda fn=fn, n=n: fn(n))
        for key, fn in generates.items()
        for kind, n in (("ttft", 1), ("total", new_tokens))
    }
    times = rounds(calls, sync, repeats, label, alternate=True)
    result = {}
    for key in generates:
        ttft, total = times[f"ttft:{key}"], times[f"total:{key}"]
        decode = [(t - f) / (new_tokens - 1) for t, f in zip(total, ttft, strict=True)]
        result[key] = dict(ttft=ttft, decode=decode, total=total)
    return result


def spread_ms(seconds: list[float]) -> dict[str, float]:
    """Median, min and max of timings, in milliseconds."""
    return dict(median_ms=statistics.median(seconds) * 1e3, min_ms=min(seconds) * 1e3, max_ms=max(seconds) * 1e3)


def table(header: list[str], rows: list[list]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned; floats with 3 decimals
    below 10 and 1 above, ``None`` as ``-``."""

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def line(values) -> str:
        return " ".join(
            v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        )

    head = line([str(h) for h in header])
    return "\n".join([head, "-" * len(head), *(line(r) for r in cells)])


def chart(path, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, title: str = "") -> None:
    """A line chart of ``series`` (name -> ``(x, y)`` points, e.g. latency against keep) saved as a PNG at ``path``;
    needs matplotlib (the ``plot`` extra)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    ax = figure.add_subplot()
    for name, points in series.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set(xlabel=x_label, ylabel=y_label, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    figure.savefig(path)
