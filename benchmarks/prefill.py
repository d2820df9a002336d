"""Prefill latency and KV-cache bytes: unmodified LLaVA vs graphprune FastV vs the original FastV code.

Three variants of one random-weight LLaVA-1.5-shaped model, side by side in one run, each eager and
under ``torch.compile``:

(a) the unmodified model (SDPA attention);
(b) graphprune: ``gp.optimize(model, gp.FastV(k=2, keep=0.5), compile=...)``;
(c) FastV as the original repository does it: a hand-written loop over the decoder layers, layer
    ``k - 1`` run with eager attention to get its attention weights (``output_attentions`` in the
    original), the last row's head-mean ranks the visual tokens, the top ``ceil(keep * n_visual)``
    are kept by ``index_select`` on the hidden states and RoPE cos/sin, and layers ``>= k`` run on
    the shorter sequence with the causal mask of the kept positions (``None``, i.e. SDPA
    ``is_causal``, which is what HF builds for an unpadded batch of 1). Batch size 1, image span
    fixed in advance, as in the original code. Compiled per segment (layers < k-1 | layer k-1 +
    ranking + gather | the rest), static shapes.

What is timed is one prefill as ``generate`` would run it: the full model forward with
``use_cache=True`` and logits for the last position only (``logits_to_keep=1``). The vision tower
(a tiny CLIP) and the embedding run eagerly in every variant; their time is printed separately
(a few % of (a) on the CPU preset) and, being the same for all, pulls the ratios slightly towards
1. Timings are medians over ``--repeats`` rounds; each round runs the three variants one after
the other, so that noise from other processes hits all of them alike. Compile time is the first
call minus the median (Dynamo + Inductor; Inductor's on-disk cache makes it shorter on later
runs). KV bytes are counted on the returned cache and checked against ``graphprune.flops.kv_bytes``.

(a) and (b) use two module trees sharing the same weight tensors (``gp.optimize`` works in place);
(a) under compile is ``torch.compile(language_model.forward)`` with default (static) shapes; (b)
under compile is what ``gp.optimize(..., compile=True)`` does (``torch.compile(dynamic=True)``).

"Ranking + gather" is the share of the ``graphprune_*`` nodes in one run of graphprune's pruned
prefill graph under a timing ``torch.fx.Interpreter`` (eager; each node synchronised on CUDA), as
a fraction of the time of all nodes of that same run.

Targets (benchmark figures, not tests): (b) prefill <= 1.1 x (theoretical FLOPs fraction x (a)),
and ranking + gather <= 2 % of the pruned prefill.

Other families (LLaVA-NeXT, Video-LLaVA, Qwen2-VL, Qwen2.5-VL) have presets of their own: a
CPU-scaled one (``*-cpu``: the cpu-small decoder proportions, a visual input of the family's shape)
and one at 7B shapes (``*-7b``, for a GPU). They time (a) and (b) only, since the original FastV
code handles one contiguous image span with 1-D positions, and show each model's speedup next to
its FLOPs fraction. ``--preset`` takes several names; ``all-cpu`` and ``all-gpu`` name every
preset of that kind (LLaVA-1.5's included), and a summary table closes the run.

    python benchmarks/prefill.py                                   # CPU, small LLaVA-shaped decoder
    python benchmarks/prefill.py --device cuda --preset llava-1.5-7b   # full 7B shapes, fp16
    python benchmarks/prefill.py --preset all-cpu                  # every family, CPU-scaled
    python benchmarks/prefill.py --device cuda --preset all-gpu    # every family, 7B shapes, fp16
    python benchmarks/prefill.py --repeats 9 --no-compile --json prefill.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import fx
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import graphprune as gp  # noqa: E402
from graphprune import ops  # noqa: E402
from graphprune.flops import kv_bytes  # noqa: E402
from graphprune.methods import n_keep  # noqa: E402
from graphprune.models import adapter_for  # noqa: E402
from graphprune.passes import INSERTED_PREFIX  # noqa: E402
from graphprune.reference.fastv import decoder_inputs, eager_attention, input_embeddings  # noqa: E402
from graphprune.testing import (  # noqa: E402
    llava_inputs,
    llava_next_inputs,
    qwen2_vl_inputs,
    tiny_llava,
    tiny_llava_next,
    tiny_qwen2_vl,
    tiny_video_llava,
    video_llava_inputs,
)

PRESETS = {
    # LLaVA-1.5 proportions (head_dim 128, MHA, intermediate / hidden = 2.69) scaled to 2 CPU cores.
    "cpu-small": dict(
        model=dict(
            hidden_size=1024,
            intermediate_size=2752,
            num_layers=8,
            num_heads=8,
            num_kv_heads=8,
            vocab_size=32064,
            image_size=336,
            patch_size=14,
        ),
        text=(35, 29),  # 576 visual + 64 text tokens
        dtype="float32",
    ),
    "llava-1.5-7b": dict(
        model=dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_layers=32,
            num_heads=32,
            num_kv_heads=32,
            vocab_size=32064,
            image_size=336,
            patch_size=14,
        ),
        text=(22, 14),  # 576 visual + 36 text tokens
        dtype="float16",
    ),
}
_CPU_DECODER = dict(hidden_size=1024, intermediate_size=2752, num_layers=8, num_heads=8, num_kv_heads=8)
_LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32)
# Qwen2-VL-7B's decoder (GQA 28/4, head_dim 128) and its CPU scaling; Qwen2.5-VL-7B has the same one.
_QWEN_CPU = dict(hidden_size=1024, intermediate_size=5504, num_layers=8, num_heads=8, num_kv_heads=2)
_QWEN_7B = dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4)
_MROPE = dict(mrope_section=(16, 24, 24), patch_size=14)
# Each: the tiny builder and its arguments, the inputs builder and one sample in its format. Vision
# towers are tiny in every preset; the visual token counts are the real models'.
FAMILY_PRESETS = {
    # one 336x336 image on 168-pixel crops: base 144 + 2x2 grid 576 + 24 newlines = 744 visual tokens
    "llava-next-cpu": dict(
        build=tiny_llava_next,
        model=dict(**_CPU_DECODER, vocab_size=32064, image_size=168, patch_size=14),
        inputs=llava_next_inputs,
        sample=(35, [(336, 336)], 29),
        dtype="float32",
    ),
    # LLaVA-NeXT-7B (Vicuna), one 672x672 image: 576 + 2304 + 48 newlines = 2928 visual tokens
    "llava-next-7b": dict(
        build=tiny_llava_next,
        model=dict(**_LLAMA_7B, vocab_size=32064, image_size=336, patch_size=14),
        inputs=llava_next_inputs,
        sample=(22, [(672, 672)], 14),
        dtype="float16",
    ),
    # one 8-frame video of 112-pixel frames: 8 x (64 + 1) = 520 visual tokens
    "video-llava-cpu": dict(
        build=tiny_video_llava,
        model=dict(**_CPU_DECODER, vocab_size=32064, image_size=112, patch_size=14),
        inputs=video_llava_inputs,
        sample=(35, 0, 1, 29),
        dtype="float32",
    ),
    # Video-LLaVA-7B, one 8-frame video of 224-pixel frames: 8 x (256 + 1) = 2056 visual tokens
    "video-llava-7b": dict(
        build=tiny_video_llava,
        model=dict(**_LLAMA_7B, vocab_size=32064, image_size=224, patch_size=14),
        inputs=video_llava_inputs,
        sample=(22, 0, 1, 14),
        dtype="float16",
    ),
    # one 672x672 image: 48x48 patches, merged 2x2 = 576 visual tokens
    "qwen2-vl-cpu": dict(
        build=tiny_qwen2_vl,
        model=dict(**_QWEN_CPU, **_MROPE, version="2", vocab_size=32064),
        inputs=qwen2_vl_inputs,
        sample=(35, [(48, 48)], [], 29),
        dtype="float32",
    ),
    # Qwen2-VL-7B, one 896x896 image: 64x64 patches, merged 2x2 = 1024 visual tokens
    "qwen2-vl-7b": dict(
        build=tiny_qwen2_vl,
        model=dict(**_QWEN_7B, **_MROPE, version="2", vocab_size=152064),
        inputs=qwen2_vl_inputs,
        sample=(22, [(64, 64)], [], 14),
        dtype="bfloat16",
    ),
    "qwen2.5-vl-cpu": dict(
        build=tiny_qwen2_vl,
        model=dict(**_QWEN_CPU, **_MROPE, version="2.5", vocab_size=32064),
        inputs=qwen2_vl_inputs,
        sample=(35, [(48, 48)], [], 29),
        dtype="float32",
    ),
    "qwen2.5-vl-7b": dict(
        build=tiny_qwen2_vl,
        model=dict(**_QWEN_7B, **_MROPE, version="2.5", vocab_size=152064),
        inputs=qwen2_vl_inputs,
        sample=(22, [(64, 64)], [], 14),
        dtype="bfloat16",
    ),
}
PRESET_GROUPS = {
    "all-cpu": ["cpu-small", *(name for name in FAMILY_PRESETS if name.endswith("-cpu"))],
    "all-gpu": ["llava-1.5-7b", *(name for name in FAMILY_PRESETS if name.endswith("-7b"))],
}
VARIANTS = {
    "a": "(a) unmodified (SDPA)",
    "b": "(b) graphprune FastV",
    "c": "(c) original FastV code",
}
TIME_FACTOR, OVERHEAD_SHARE = 1.1, 0.02


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A second module tree over the same parameter and buffer tensors (and its own configs)."""
    memo = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def _cache_bytes(cache: DynamicCache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


class OriginalFastV:
    """FastV the way the original repository runs it (batch 1, one image span at a known place).

    Calling it returns ``(logits of the last position, cache, kept positions)``.
    """

    def __init__(self, model, k: int, keep: float, image_start: int, n_visual: int, compile: bool):
        self.model, self.lm = model, model.model.language_model
        self.k, self.kept_visual = k, n_keep(keep, n_visual)
        self.image_start, self.image_end = image_start, image_start + n_visual
        wrap = (lambda fn: torch.compile(fn, dynamic=False)) if compile else (lambda fn: fn)
        self._head, self._prune, self._tail = wrap(self.head), wrap(self.prune), wrap(self.tail)

    def __call__(self, input_ids, pixel_values):
        cache = DynamicCache(config=self.lm.config)
        hidden = input_embeddings(self.model, input_ids, pixel_values)
        hidden, cos, sin = self._head(hidden, cache)
        with eager_attention(self.lm.config):  # output_attentions at layer k-1 needs eager attention
            hidden, cos, sin, keep_index = self._prune(hidden, cos, sin, cache)
        return self._tail(hidden, cos, sin, cache), cache, keep_index

    def head(self, hidden, cache):
        """RoPE for every position and layers ``0 .. k-2`` on the full sequence."""
        positions = torch.arange(hidden.shape[1], device=hidden.device)[None]
        cos, sin = self.lm.rotary_emb(hidden, position_ids=positions)
        for layer in self.lm.layers[: self.k - 1]:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), past_key_values=cache)
        return hidden, cos, sin

    def prune(self, hidden, cos, sin, cache):
        """Layer ``k - 1`` with its attention weights, then FastV's ranking and the gather."""
        layer, length = self.lm.layers[self.k - 1], hidden.shape[1]
        dtype, device = hidden.dtype, hidden.device
        causal = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)[None, None]
        attended, weights = layer.self_attn(
            hidden_states=layer.input_layernorm(hidden),
            position_embeddings=(cos, sin),
            attention_mask=causal,
            past_key_values=cache,
        )
        hidden = hidden + attended
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        last_row = weights.mean(dim=1)[0, -1]  # head mean, last token's row
        top = last_row[self.image_start : self.image_end].topk(self.kept_visual).indices + self.image_start
        before = torch.arange(self.image_start, device=device)
        after = torch.arange(self.image_end, length, device=device)
        keep_index = torch.cat([before, top, after]).sort().values
        return (
            hidden.index_select(1, keep_index),
            cos.index_select(1, keep_index),
            sin.index_select(1, keep_index),
            keep_index,
        )

    def tail(self, hidden, cos, sin, cache):
        """Layers ``k ..`` on the kept positions (causal among them), final norm, LM head on the last one."""
        for layer in self.lm.layers[self.k :]:
            hidden = layer(hidden, attention_mask=None, position_embeddings=(cos, sin), past_key_values=cache)
        return self.model.lm_head(self.lm.norm(hidden[:, -1:]))


class _NodeTimer(fx.Interpreter):
    """Runs a GraphModule node by node and records each node's wall time."""

    def __init__(self, gm: fx.GraphModule, sync):
        super().__init__(gm)
        self.sync, self.times = sync, {}

    def run_node(self, node):
        self.sync()
        start = time.perf_counter()
        value = super().run_node(node)
        self.sync()
        self.times[node.name] = time.perf_counter() - start
        return value


def ranking_gather_share(model, inputs, method, sync, repeats: int) -> dict:
    """Share of the ``graphprune_*`` nodes in the pruned prefill graph's run time (median over runs)."""
    graph = gp.runtime.optimized_state(model).decoder.prefill_graph
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    batch, length = input_ids.shape
    visual = input_ids == model.config.image_token_id
    dropped = visual.sum(dim=-1) - ops.keep_counts(visual, method.keep)
    slots = torch.arange(int((mask.sum(dim=-1) - dropped).max()), device=input_ids.device)
    positions = torch.arange(length, device=input_ids.device)[None].expand(batch, length)
    shares, inserted_ms, total_ms = [], [], []
    with torch.no_grad():
        embeds = input_embeddings(model, input_ids, inputs.get("pixel_values"))
        for _ in range(repeats + 1):  # the first run warms up
            timer = _NodeTimer(graph, sync)
            timer.run(embeds, mask, positions, visual, slots)
            inserted = sum(t for name, t in timer.times.items() if name.startswith(INSERTED_PREFIX))
            total = sum(timer.times.values())
            shares.append(inserted / total)
            inserted_ms.append(inserted * 1e3)
            total_ms.append(total * 1e3)
    nodes = sorted(name for name in timer.times if name.startswith(INSERTED_PREFIX))
    return dict(
        share=statistics.median(shares[1:]),
        inserted_ms=statistics.median(inserted_ms[1:]),
        interpreted_total_ms=statistics.median(total_ms[1:]),
        nodes=nodes,
    )


def _measure(callables: dict, sync, repeats: int, label: str) -> tuple[dict, dict, dict]:
    """First call (compile/warm-up), one more warm-up, then ``repeats`` round-robin rounds."""
    first, outputs = {}, {}
    for key, fn in callables.items():
        print(f"  {label}: first call of {VARIANTS[key]} ...", flush=True)
        sync()
        start = time.perf_counter()
        outputs[key] = fn()
        sync()
        first[key] = time.perf_counter() - start
        fn()  # second warm-up (autotuning, allocator)
    times = {key: [] for key in callables}
    for round_ in range(repeats):
        for key, fn in callables.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[key].append(time.perf_counter() - start)
        print(
            f"  {label}: round {round_ + 1}/{repeats}: "
            + ", ".join(f"{k} {t[-1] * 1e3:.0f} ms" for k, t in times.items())
        )
    return times, first, outputs


def _kv_of(key: str, output):
    return _cache_bytes(output[1] if key == "c" else output.past_key_values)


def _logits_of(key: str, output) -> torch.Tensor:
    return (output[0] if key == "c" else output.logits)[:, -1].float()


def run(args, preset_name: str) -> dict:
    """LLaVA-1.5: variants (a), (b) and (c), the ranking + gather share, and checks between (b) and (c)."""
    preset = PRESETS[preset_name]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or preset["dtype"])
    sync = _sync(device)
    method = gp.FastV(k=args.k, keep=args.keep)
    torch.manual_seed(0)

    start = time.perf_counter()
    model_a = tiny_llava(**preset["model"], dtype=dtype, attn_implementation="sdpa").to(device)
    model_b = _shared_copy(model_a)
    before_text, after_text = preset["text"]
    inputs = {k: v.to(device) for k, v in llava_inputs(model_a, [(before_text, 1, after_text)]).items()}
    call_args = dict(**inputs, use_cache=True, logits_to_keep=1)
    visual = (inputs["input_ids"][0] == model_a.config.image_token_id).nonzero().flatten()
    n_tokens, n_visual, image_start = inputs["input_ids"].shape[1], len(visual), int(visual[0])
    kept_tokens = n_tokens - n_visual + n_keep(method.keep, n_visual)
    text = model_a.config.text_config
    print(
        f"model: {preset_name}, {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
        f"intermediate {text.intermediate_size}, heads {text.num_attention_heads}/{text.num_key_value_heads}, "
        f"{dtype}, {device}; {n_tokens} tokens ({n_visual} visual); built in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    flops_before, flops_after = gp.flops(model_a.config, method, n_tokens, n_visual)
    flops_fraction = flops_after / flops_before
    elem = torch.finfo(dtype).bits // 8
    layers = text.num_hidden_layers
    expected_kv = {
        "a": kv_bytes(model_a.config, [n_tokens] * layers, elem),
        "b": kv_bytes(model_a.config, [n_tokens] * method.k + [kept_tokens] * (layers - method.k), elem),
    }
    expected_kv["c"] = expected_kv["b"]

    embed_ms = []
    with torch.no_grad():
        for _ in range(args.repeats + 1):
            sync()
            start = time.perf_counter()
            input_embeddings(model_a, inputs["input_ids"], inputs.get("pixel_values"))
            sync()
            embed_ms.append((time.perf_counter() - start) * 1e3)

    modes = [False] if args.no_compile else [False, True]
    rows, checks, overhead = [], {}, None
    lm_a = model_a.model.language_model
    with torch.no_grad():
        for compiled in modes:
            label = "compiled" if compiled else "eager"
            start = time.perf_counter()
            gp.optimize(model_b, method, compile=compiled)
            optimize_s = time.perf_counter() - start
            print(f"{label}: gp.optimize took {optimize_s:.1f} s (capture + passes)", flush=True)
            if compiled:
                lm_a.forward = torch.compile(lm_a.forward)
            original = OriginalFastV(model_a, method.k, method.keep, image_start, n_visual, compiled)
            callables = {
                "a": lambda: model_a(**call_args),
                "b": lambda: model_b(**call_args),
                "c": lambda original=original: original(inputs["input_ids"], inputs.get("pixel_values")),
            }
            try:
                times, first, outputs = _measure(callables, sync, args.repeats, label)
                graphprune_kept = gp.runtime.optimized_state(model_b).decoder.last_prefill.keep_index[0].tolist()
                checks[label] = dict(
                    kept_positions=len(graphprune_kept),
                    kept_positions_only_in_b=len(set(graphprune_kept) - set(outputs["c"][2].tolist())),
                    logits_max_abs_diff_b_c=float(
                        (_logits_of("b", outputs["b"]) - _logits_of("c", outputs["c"])).abs().max()
                    ),
                )
                if not compiled:
                    overhead = ranking_gather_share(model_b, inputs, method, sync, args.repeats)
            finally:
                gp.restore(model_b)
                lm_a.__dict__.pop("forward", None)
            for key in callables:
                median = statistics.median(times[key])
                rows.append(
                    dict(
                        variant=key,
                        name=VARIANTS[key],
                        compiled=compiled,
                        median_ms=median * 1e3,
                        min_ms=min(times[key]) * 1e3,
                        max_ms=max(times[key]) * 1e3,
                        first_call_s=first[key],
                        compile_s=max(first[key] - median, 0.0) if compiled else None,
                        kv_bytes=_kv_of(key, outputs[key]),
                        expected_kv_bytes=expected_kv[key],
                        times_ms=[t * 1e3 for t in times[key]],
                    )
                )
    return dict(
        preset=preset_name,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        threads=torch.get_num_threads(),
        dtype=str(dtype),
        method=dict(k=method.k, keep=method.keep),
        model={**preset["model"]},
        n_tokens=n_tokens,
        n_visual=n_visual,
        kept_tokens=kept_tokens,
        repeats=args.repeats,
        flops=dict(before=flops_before, after=flops_after, fraction=flops_fraction),
        vision_and_embedding_ms=statistics.median(embed_ms[1:]),
        rows=rows,
        checks=checks,
        ranking_gather=overhead,
        versions=dict(torch=torch.__version__, graphprune=gp.__version__),
    )


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


def run_family(args, preset_name: str) -> dict:
    """Another family: (a) unmodified and (b) graphprune FastV, eager and (unless --no-compile) compiled."""
    preset = FAMILY_PRESETS[preset_name]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or preset["dtype"])
    sync = _sync(device)
    method = gp.FastV(k=args.k, keep=args.keep)
    torch.manual_seed(0)

    start = time.perf_counter()
    model_a = preset["build"](**preset["model"], dtype=dtype, attn_implementation="sdpa").to(device)
    model_b = _shared_copy(model_a)
    inputs = {k: v.to(device) for k, v in preset["inputs"](model_a, [preset["sample"]]).items()}
    call_args = dict(**inputs, use_cache=True, logits_to_keep=1)
    n_tokens = inputs["input_ids"].shape[1]
    n_visual = int(adapter_for(model_a).visual_mask(model_a, inputs["input_ids"], None).sum())
    kept_tokens = n_tokens - n_visual + n_keep(method.keep, n_visual)
    text = model_a.config.get_text_config(decoder=True)
    print(
        f"model: {preset_name} ({type(model_a).__name__}), {text.num_hidden_layers} layers, hidden "
        f"{text.hidden_size}, intermediate {text.intermediate_size}, heads {text.num_attention_heads}/"
        f"{text.num_key_value_heads}, {dtype}, {device}; {n_tokens} tokens ({n_visual} visual); "
        f"built in {time.perf_counter() - start:.1f} s",
        flush=True,
    )
    flops_before, flops_after = gp.flops(model_a.config, method, n_tokens, n_visual)
    elem = torch.finfo(dtype).bits // 8
    layers = text.num_hidden_layers
    expected_kv = {
        "a": kv_bytes(model_a.config, [n_tokens] * layers, elem),
        "b": kv_bytes(model_a.config, [n_tokens] * method.k + [kept_tokens] * (layers - method.k), elem),
    }
    vision_ms = []
    for _ in range(args.repeats + 1):  # the model's forward up to its decoder: vision, projector, embedding, positions
        sync()
        start = time.perf_counter()
        decoder_inputs(model_a, False, **inputs)
        sync()
        vision_ms.append((time.perf_counter() - start) * 1e3)
    rows = []
    lm_a = model_a.model.language_model
    with torch.no_grad():
        for compiled in [False] if args.no_compile else [False, True]:
            label = f"{preset_name} {'compiled' if compiled else 'eager'}"
            gp.optimize(model_b, method, compile=compiled)
            if compiled:
                lm_a.forward = torch.compile(lm_a.forward)
            callables = {"a": lambda: model_a(**call_args), "b": lambda: model_b(**call_args)}
            try:
                times, first, outputs = _measure(callables, sync, args.repeats, label)
            finally:
                gp.restore(model_b)
                lm_a.__dict__.pop("forward", None)
            for key in callables:
                median = statistics.median(times[key])
                rows.append(
                    dict(
                        variant=key,
                        name=VARIANTS[key],
                        compiled=compiled,
                        median_ms=median * 1e3,
                        min_ms=min(times[key]) * 1e3,
                        max_ms=max(times[key]) * 1e3,
                        compile_s=max(first[key] - median, 0.0) if compiled else None,
                        kv_bytes=_kv_of(key, outputs[key]),
                        expected_kv_bytes=expected_kv[key],
                        times_ms=[t * 1e3 for t in times[key]],
                    )
                )
    return dict(
        preset=preset_name,
        model_class=type(model_a).__name__,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        threads=torch.get_num_threads(),
        dtype=str(dtype),
        method=dict(k=method.k, keep=method.keep),
        model=dict(preset["model"]),
        n_tokens=n_tokens,
        n_visual=n_visual,
        kept_tokens=kept_tokens,
        repeats=args.repeats,
        flops=dict(before=flops_before, after=flops_after, fraction=flops_after / flops_before),
        vision_and_embedding_ms=statistics.median(vision_ms[1:]),
        rows=rows,
        versions=dict(torch=torch.__version__, graphprune=gp.__version__),
    )


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


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    names = sorted([*PRESETS, *FAMILY_PRESETS, *PRESET_GROUPS])
    parser.add_argument(
        "--preset", nargs="+", choices=names, default=["cpu-small"], help="one or more; default: cpu-small"
    )
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="default: the preset's")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; the median is reported (default: 5)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--k", type=int, default=2, help="FastV k (default: 2)")
    parser.add_argument("--keep", type=float, default=0.5, help="FastV keep fraction (default: 0.5)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    presets = [name for group in args.preset for name in PRESET_GROUPS.get(group, [group])]
    results = []
    for name in dict.fromkeys(presets):
        start = time.perf_counter()
        result = run(args, name) if name in PRESETS else run_family(args, name)
        result["wall_s"] = time.perf_counter() - start
        print(report(result) if name in PRESETS else family_report(result))
        print(f"\nwall time {result['wall_s']:.0f} s")
        results.append(result)
    if len(results) > 1:
        print(summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()
