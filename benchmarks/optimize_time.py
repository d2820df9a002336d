"""How long ``gp.optimize`` takes against the decoder's layer count: a LLaVA-1.5-7B-shaped decoder (hidden 4096,
32 heads, intermediate 11008, vocab 32000) cut to 4, 8, 16 and 32 layers, bf16, its weights on the meta device
(no memory; capture traces shapes only, so the figures are those of real weights).

Per layer count: ``gp.optimize`` end to end (FastV k=2, keep=0.5), then its parts run alone: the capture of the
prefill graph, of the decode graph, and the passes. CPU seconds of this process (``time.process_time``) are the
figures to compare: the machine may be shared, which inflates wall time but not CPU time; wall time is shown too.
The per-layer column (extra seconds per extra layer between neighbouring rows) is flat when optimize scales
linearly.

    python benchmarks/optimize_time.py                       # 4 8 16 32 layers
    python benchmarks/optimize_time.py --layers 4 8 --chart optimize_time.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from transformers import LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

import graphprune as gp  # noqa: E402
from benchmarks.harness import IMAGE_TOKEN_ID, LLAMA_7B, PAD_TOKEN_ID, chart, llama_text_config, table  # noqa: E402
from graphprune.capture import capture_decode, capture_prefill, causal_prefill  # noqa: E402
from graphprune.models import adapter_for  # noqa: E402
from graphprune.registry import handler_for  # noqa: E402
from graphprune.testing.common import clip_config  # noqa: E402

METHOD = gp.FastV(k=2, keep=0.5)


def meta_llava(num_layers: int) -> LlavaForConditionalGeneration:
    """LLaVA-1.5-7B's decoder shape at ``num_layers`` layers, bf16 on the meta device, in eval mode."""
    shape = {**LLAMA_7B, "num_layers": num_layers}
    config = LlavaConfig(
        text_config=llama_text_config(*shape.values(), 32000),
        vision_config=clip_config(336, 14),
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=32000,
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            return LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)


def clocked(fn):
    """``fn()``'s (CPU seconds, wall seconds, value)."""
    cpu, wall = time.process_time(), time.perf_counter()
    value = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, value


def parts(model) -> dict[str, float]:
    """CPU seconds of optimize's parts run alone: prefill capture, decode capture, the passes."""
    adapter = adapter_for(model)
    decoder, layout, handler = adapter.decoder(model), adapter.layout(model), handler_for(METHOD)
    prefill_s, _, prefill = clocked(lambda: capture_prefill(decoder, layout))
    decode_s, _, decode = clocked(lambda: capture_decode(decoder, layout))

    def passes():
        unpadded = causal_prefill(prefill, decoder)
        handler.decode_pass(decode, METHOD)
        if unpadded is not None:
            handler.prefill_pass(unpadded, METHOD)
        handler.prefill_pass(prefill, METHOD)

    passes_s = clocked(passes)[0]
    return {"prefill": prefill_s, "decode": decode_s, "passes": passes_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 32], help="default: 4 8 16 32")
    parser.add_argument("--chart", type=Path, help="also draw CPU seconds against layers as a PNG (matplotlib)")
    args = parser.parse_args()
    rows = []
    for num_layers in args.layers:
        model = meta_llava(num_layers)
        cpu, wall, _ = clocked(lambda model=model: gp.optimize(model, METHOD))
        gp.restore(model)
        split = parts(model)
        per_layer = None if not rows else (cpu - rows[-1][1]) / (num_layers - rows[-1][0])
        rows.append([num_layers, cpu, wall, per_layer, split["prefill"], split["decode"], split["passes"]])
        print(f"  {num_layers} layers: optimize {cpu:.1f} CPU s ({wall:.1f} s wall)", flush=True)
    header = ["layers", "optimize CPU s", "wall s", "CPU s/extra layer", "prefill capture", "decode capture", "passes"]
    print(f"\ngp.optimize, LLaVA-1.5-7B-shaped decoder (bf16, meta device), {METHOD}, torch {torch.__version__}")
    print(table(header, rows))
    if args.chart:
        series = {
            name: [(row[0], row[i]) for row in rows]
            for i, name in [(1, "optimize"), (4, "prefill capture"), (5, "decode capture")]
        }
        chart(args.chart, series, x_label="decoder layers", y_label="CPU seconds", title="gp.optimize time")
        print(f"chart: {args.chart}")


if __name__ == "__main__":
    main()
