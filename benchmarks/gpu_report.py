"""What ``benchmarks/gpu_suite.py`` prints: each case's table, speedup verdicts and SDPA kernels, and the summary."""

from __future__ import annotations

from benchmarks.harness import table

VARIANTS = {"a": "(a) unmodified", "b": "(b) graphprune", "c": "(c) FastV eager"}
PREFILL_TARGET = 1.7  # speedup of (b) over (a), LLaVA-1.5-7B, keep=0.5 (issue 15)


def seconds_text(value: float | None) -> str:
    return "failed" if value is None else f"{value:.1f} s"


def report(result: dict, new_tokens: int) -> str:
    flops = result["flops"]
    lines = [
        "",
        f"{result['case']} ({result['model_class']}, {result['parameters'] / 1e9:.2f} B parameters): "
        f"{result['tokens']} tokens ({result['visual']} visual, {result.get('kept_visual')} kept), "
        f"FastV k=2 keep=0.5; FLOPs {flops['before'] / 1e9:.1f} -> {flops['after'] / 1e9:.1f} GFLOP, "
        f"fraction {flops['fraction']:.3f}; gp.optimize {seconds_text(result['optimize_s'])}, "
        f"build {result['build_s']:.1f} s",
    ]
    rows = []
    for batch in result["batches"]:
        for metric in ("prefill", "ttft", "decode"):
            base = batch[metric]["a"]["median_ms"]
            for key, figures in batch[metric].items():
                ratio = figures["median_ms"] / base
                rows.append(
                    [
                        f"{metric}{' per token' if metric == 'decode' else ''}",
                        batch["batch"],
                        VARIANTS[key],
                        figures["median_ms"],
                        figures["min_ms"],
                        ratio,
                        1 / ratio,
                    ]
                )
    header = ["measure", "batch", "variant", "median ms", "min ms", "vs (a)", "speedup"]
    lines.append(table(header, rows))
    lines.append(f"(decode per token = (generate {new_tokens} tokens - TTFT) / {new_tokens - 1}, per round)")
    if result["batches"] and "b" in result["batches"][0]["prefill"]:
        prefill = result["batches"][0]["prefill"]
        speedup = prefill["a"]["median_ms"] / prefill["b"]["median_ms"]
        bound = 1 / (1.1 * flops["fraction"])
        verdicts = [f"1.1 x FLOPs fraction: {'PASS' if speedup >= bound else 'MISS'}"]
        if result["case"] == "llava-1.5-7b":
            verdicts.append(f"issue target >= {PREFILL_TARGET} x: {'PASS' if speedup >= PREFILL_TARGET else 'MISS'}")
        lines.append(
            f"prefill speedup (b) at batch 1: {speedup:.2f} x (1 / FLOPs fraction = {1 / flops['fraction']:.2f} x; "
            + "; ".join(verdicts)
            + ")"
        )
    for key, kernels in result.get("sdpa_kernels", {}).items():
        if kernels is None:
            lines.append(f"SDPA kernel per decoder layer, {VARIANTS[key]}: the check failed (traceback above)")
            continue
        kinds = ", ".join(f"{kind}: {count}" for kind, count in kernels["decoder_layers"].items())
        lines.append(f"SDPA kernel per decoder layer, {VARIANTS[key]}: {kinds} (of {result['layers']} layers)")
        if kernels["cuda_attention_kernels"]:
            names = "; ".join(f"{n} x{c}" for n, c in kernels["cuda_attention_kernels"].items())
            lines.append(f"  CUDA attention kernels: {names}")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """One line per case, batch and measure: the median of (a) and each variant's ratio to it."""
    rows = []
    for result in results:
        if "error" in result or "skipped" in result:
            rows.append([result["case"], "-", "FAILED" if "error" in result else "skipped", None, None, None, None])
            continue
        for batch in result["batches"]:
            for metric in ("prefill", "ttft", "decode"):
                figures = batch[metric]
                a = figures["a"]["median_ms"]
                ratio = {key: figures[key]["median_ms"] / a if key in figures else None for key in "bc"}
                rows.append(
                    [result["case"], batch["batch"], metric, a, ratio["b"], ratio["c"], result["flops"]["fraction"]]
                )
    header = ["case", "batch", "measure", "(a) median ms", "(b)/(a)", "(c)/(a)", "FLOPs fraction"]
    return "\nsummary (medians; decode is per new token)\n" + table(header, rows)
