"""Roofline of a 7B LLaVA-1.5 prefill and decode step at batch 1 (fp16), unmodified vs graphprune FastV: FLOPs
(``gp.flops``' paper count, and the matmul count that includes the gated MLP's third matrix and counts a multiply-add
as 2), bytes read (decoder and LM-head weights, plus the KV cache the step writes or reads, ``gp.flops``'
``kv_bytes``), and the time each takes at a device's peak: which roof bounds the step.

Devices (peak figures, dense fp16 tensor math and DRAM bandwidth):
- Jetson AGX Orin 64 GB: 204.8 GB/s (LPDDR5, 256-bit); fp16 dense tensor 42.5 TFLOPS, from the GPU's 170 sparse
  INT8 TOPS (NVIDIA Jetson AGX Orin Series Technical Brief v1.2; the module's 275 TOPS add the two DLAs' 105):
  / 2 without sparsity, / 2 for fp16 against INT8 on Ampere tensor cores.
- H100 SXM5 80 GB (the "H100 80GB HBM3" of the GPU suite): 989.4 TFLOPS dense fp16/bf16 tensor, 3.35 TB/s HBM3
  (NVIDIA H100 datasheet).

    python benchmarks/roofline.py                      # 640 tokens (36 + 576 visual + 28), FastV k=2 keep=0.5
    python benchmarks/roofline.py --tokens 612 --visual 576
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]

from transformers import LlamaConfig  # noqa: E402

import graphprune as gp  # noqa: E402
from benchmarks.harness import LLAMA_7B, table  # noqa: E402
from graphprune.flops import kv_bytes  # noqa: E402
from graphprune.methods import n_keep  # noqa: E402

DEVICES = {"Jetson AGX Orin 64GB": (42.5e12, 204.8e9), "H100 SXM5": (989.4e12, 3.35e12)}  # FLOP/s, bytes/s
VOCAB = 32064
FP16 = 2


def llama_7b() -> LlamaConfig:
    shape = LLAMA_7B
    return LlamaConfig(
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape["num_kv_heads"],
        vocab_size=VOCAB,
    )


def weight_bytes(config: LlamaConfig) -> int:
    """fp16 bytes of the decoder layers' and the LM head's weights (what every step reads; norms left out)."""
    d, m, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * config.head_dim
    layer = 2 * d * d + 2 * d * kv + 3 * d * m
    return FP16 * (config.num_hidden_layers * layer + d * config.vocab_size)


def matmul_flops(config: LlamaConfig, rows: list[int], keys: list[int]) -> int:
    """2 x multiply-adds of the projections, gated MLP and attention (QK and PV over ``keys[i]`` keys for ``rows[i]``
    queries in layer i, no causal saving), plus the LM head for one row."""
    d, m, kv = config.hidden_size, config.intermediate_size, config.num_key_value_heads * config.head_dim
    per_row = 2 * d * d + 2 * d * kv + 3 * d * m
    total = sum(n * per_row + 2 * n * k * d for n, k in zip(rows, keys, strict=True))
    return 2 * (total + d * config.vocab_size)


def steps(tokens: int, visual: int, method: gp.FastV) -> list[tuple[str, float, float, int]]:
    """(step, paper FLOPs, matmul FLOPs, bytes) for the prefill and one decode step, unmodified and pruned."""
    config = llama_7b()
    layers = config.num_hidden_layers
    kept = tokens - visual + n_keep(method.keep, visual)
    paper = gp.flops(config, method, tokens, visual)
    full, pruned = [tokens] * layers, [tokens] * method.k + [kept] * (layers - method.k)
    weights = weight_bytes(config)
    rows = []
    for name, cached, paper_flops in (("unmodified", full, paper[0]), ("graphprune", pruned, paper[1])):
        prefill = matmul_flops(config, cached, cached)
        rows.append((f"prefill, {name}", paper_flops, prefill, weights + kv_bytes(config, cached, FP16)))
        decode = matmul_flops(config, [1] * layers, [n + 1 for n in cached])
        rows.append((f"decode step, {name}", None, decode, weights + kv_bytes(config, cached, FP16)))
    return rows


def report(tokens: int, visual: int, method: gp.FastV) -> str:
    header = ["step (batch 1, fp16)", "paper GFLOP", "matmul GFLOP", "GB read", "FLOP/byte"]
    for device in DEVICES:
        header += [f"{device}: compute ms", "memory ms", "bound"]
    rows = []
    for name, paper, flop, read in steps(tokens, visual, method):
        row = [name, None if paper is None else paper / 1e9, flop / 1e9, read / 1e9, flop / read]
        for peak, bandwidth in DEVICES.values():
            compute, memory = 1e3 * flop / peak, 1e3 * read / bandwidth
            row += [compute, memory, "compute" if compute > memory else "memory"]
        rows.append(row)
    ridges = ", ".join(f"{device} {peak / bandwidth:.0f}" for device, (peak, bandwidth) in DEVICES.items())
    head = f"{tokens} tokens ({visual} visual), FastV k={method.k} keep={method.keep}; ridge FLOP/byte: {ridges}"
    return head + "\n" + table(header, rows)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=640, help="prompt tokens (default: 640)")
    parser.add_argument("--visual", type=int, default=576, help="visual tokens among them (default: 576)")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--keep", type=float, default=0.5)
    args = parser.parse_args(argv)
    text = report(args.tokens, args.visual, gp.FastV(k=args.k, keep=args.keep))
    print(text)
    return text


if __name__ == "__main__":
    main()
