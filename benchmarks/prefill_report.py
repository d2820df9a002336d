"""What ``benchmarks/prefill.py`` prints: the LLaVA-1.5 table and targets, the other families' tables, the summary."""

from __future__ import annotations

VARIANTS = {
    "a": "(a) unmodified (SDPA)",
    "b": "(b) graphprune FastV",
    "c": "(c) original FastV code",
}
TIME_FACTOR, OVERHEAD_SHARE = 1.1, 0.02


def report(result: dict) -> str:
    rows = result["rows"]
    base = {(r["compiled"]): r for r in rows if r["variant"] == "a"}
    header = (
        f"{'variant':<26} {'compile':<8} {'prefill ms':>10} {'(min-max)':>15} {'vs (a)':>7} "
        f"{'KV MiB':>8} {'vs (a)':>7} {'compile s':>9}"
    )
    lines = [
        "",
        f"prefill, {result['preset']} on {result['device']} ({result['device_name']}, {result['threads']} threads), "
        f"{result['dtype']}, FastV k={result['method']['k']} keep={result['method']['keep']}: "
        f"{result['n_tokens']} tokens ({result['n_visual']} visual) -> {result['kept_tokens']} after layer "
        f"{result['method']['k'] - 1}; median of {result['repeats']}",
        header,
        "-" * len(header),
    ]
    for r in rows:
        a = base[r["compiled"]]
        spread = f"({r['min_ms']:.0f}-{r['max_ms']:.0f})"
        compile_s = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        lines.append(
            f"{r['name']:<26} {'yes' if r['compiled'] else 'no':<8} {r['median_ms']:>10.1f} {spread:>15} "
            f"{r['median_ms'] / a['median_ms']:>7.3f} {r['kv_bytes'] / 2**20:>8.1f} "
            f"{r['kv_bytes'] / a['kv_bytes']:>7.3f} {compile_s:>9}"
        )
    flops = result["flops"]
    fraction = flops["fraction"]
    lines += [
        "",
        f"vision tower + embedding (eager, in every variant above): {result['vision_and_embedding_ms']:.1f} ms",
        f"theoretical FLOPs (FastV paper count): {flops['before'] / 1e9:.1f} -> {flops['after'] / 1e9:.1f} GFLOP, "
        f"fraction {fraction:.3f}",
    ]
    for r in rows:
        if r["variant"] != "b":
            continue
        a = base[r["compiled"]]
        ratio, bound = r["median_ms"] / a["median_ms"], TIME_FACTOR * fraction
        verdict = "PASS" if ratio <= bound else "MISS"
        mode = "compiled" if r["compiled"] else "eager"
        lines.append(
            f"target 1 ({mode}): graphprune / unmodified = {ratio:.3f} <= {TIME_FACTOR} x {fraction:.3f} "
            f"= {bound:.3f}: {verdict}"
        )
    overhead = result["ranking_gather"]
    if overhead is not None:
        verdict = "PASS" if overhead["share"] <= OVERHEAD_SHARE else "MISS"
        lines.append(
            f"target 2 (eager, fx.Interpreter): ranking + gather = {overhead['share'] * 100:.2f} % of the pruned "
            f"prefill ({overhead['inserted_ms']:.2f} of {overhead['interpreted_total_ms']:.1f} ms) <= "
            f"{OVERHEAD_SHARE * 100:.0f} %: {verdict}"
        )
    for mode, check in result["checks"].items():
        lines.append(
            f"check ({mode}): kept positions that (b) and (c) do not share: {check['kept_positions_only_in_b']} of "
            f"{check['kept_positions']}; last-token logits max |b - c| = {check['logits_max_abs_diff_b_c']:.2e}"
        )
    wrong_kv = [
        f"{r['name']} ({'compiled' if r['compiled'] else 'eager'})"
        for r in rows
        if r["kv_bytes"] != r["expected_kv_bytes"]
    ]
    if wrong_kv:
        lines.append("WARNING: KV bytes differ from graphprune.flops.kv_bytes for " + ", ".join(wrong_kv))
    return "\n".join(lines)


def family_report(result: dict) -> str:
    header = (
        f"{'variant':<26} {'compile':<8} {'prefill ms':>10} {'(min-max)':>15} {'vs (a)':>7} {'KV MiB':>8} {'vs (a)':>7}"
    )
    lines = [
        "",
        f"prefill, {result['preset']} ({result['model_class']}) on {result['device']}, {result['dtype']}, FastV "
        f"k={result['method']['k']} keep={result['method']['keep']}: {result['n_tokens']} tokens "
        f"({result['n_visual']} visual) -> {result['kept_tokens']}; median of {result['repeats']}",
        header,
        "-" * len(header),
    ]
    base = {r["compiled"]: r for r in result["rows"] if r["variant"] == "a"}
    for r in result["rows"]:
        a = base[r["compiled"]]
        spread = f"({r['min_ms']:.0f}-{r['max_ms']:.0f})"
        lines.append(
            f"{r['name']:<26} {'yes' if r['compiled'] else 'no':<8} {r['median_ms']:>10.1f} {spread:>15} "
            f"{r['median_ms'] / a['median_ms']:>7.3f} "
            f"{r['kv_bytes'] / 2**20:>8.1f} {r['kv_bytes'] / a['kv_bytes']:>7.3f}"
        )
    flops = result["flops"]
    lines += [
        f"vision tower + embedding + positions (eager, in both variants): {result['vision_and_embedding_ms']:.1f} ms",
        f"theoretical FLOPs (FastV paper count): {flops['before'] / 1e9:.1f} -> {flops['after'] / 1e9:.1f} GFLOP, "
        f"fraction {flops['fraction']:.3f}",
    ]
    wrong_kv = [r["name"] for r in result["rows"] if r["kv_bytes"] != r["expected_kv_bytes"]]
    if wrong_kv:
        lines.append("WARNING: KV bytes differ from graphprune.flops.kv_bytes for " + ", ".join(wrong_kv))
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """One line per preset and mode: graphprune's prefill time over the unmodified one, and the FLOPs fraction."""
    header = (
        f"{'preset':<16} {'tokens (visual)':>16} {'compile':<8} {'(a) ms':>9} {'(b) ms':>9} {'(b)/(a)':>8} "
        f"{'FLOPs':>6} {'target':>7} {'vision ms':>10}"
    )
    lines = [
        "",
        f"summary: FastV prefill vs the unmodified model, target (b)/(a) <= {TIME_FACTOR} x FLOPs fraction; "
        "vision ms: vision tower and embedding, eager, included in (a) and (b)",
    ]
    lines += [header, "-" * len(header)]
    for result in results:
        fraction = result["flops"]["fraction"]
        for compiled in sorted({r["compiled"] for r in result["rows"]}):
            a, b = (next(r for r in result["rows"] if r["variant"] == v and r["compiled"] == compiled) for v in "ab")
            ratio = b["median_ms"] / a["median_ms"]
            tokens = f"{result['n_tokens']} ({result['n_visual']})"
            lines.append(
                f"{result['preset']:<16} {tokens:>16} "
                f"{'yes' if compiled else 'no':<8} {a['median_ms']:>9.1f} {b['median_ms']:>9.1f} {ratio:>8.3f} "
                f"{fraction:>6.3f} {'PASS' if ratio <= TIME_FACTOR * fraction else 'MISS':>7} "
                f"{result['vision_and_embedding_ms']:>10.1f}"
            )
    return "\n".join(lines)
