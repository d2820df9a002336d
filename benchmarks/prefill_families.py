"""``benchmarks/prefill.py``'s other families (LLaVA-NeXT, Video-LLaVA, Qwen2-VL, Qwen2.5-VL): presets and run; and the
KV-cache, timing and row helpers that both runs use."""

from __future__ import annotations

import statistics
import time

import torch

import graphprune as gp
from benchmarks.harness import (
    CPU_DECODER,
    LLAMA_7B,
    MROPE,
    QWEN_7B,
    QWEN_CPU,
    cache_bytes,
    device_name,
    llava_next_inputs,
    measure,
    qwen2_vl_inputs,
    shared_copy,
    spread_ms,
    sync_for,
    timed,
    tiny_llava_next,
    tiny_qwen2_vl,
    tiny_video_llava,
    video_llava_inputs,
)
from benchmarks.prefill_report import VARIANTS
from graphprune.flops import kv_bytes
from graphprune.methods import n_keep
from graphprune.models import adapter_for
from graphprune.reference.fastv import decoder_inputs

# Each: the tiny builder and its arguments, the inputs builder and one sample in its format. Vision
# towers are tiny in every preset; the visual token counts are the real models'.
FAMILY_PRESETS = {
    # one 336x336 image on 168-pixel crops: base 144 + 2x2 grid 576 + 24 newlines = 744 visual tokens
    "llava-next-cpu": dict(
        build=tiny_llava_next,
        model=dict(**CPU_DECODER, vocab_size=32064, image_size=168, patch_size=14),
        inputs=llava_next_inputs,
        sample=(35, [(336, 336)], 29),
        dtype="float32",
    ),
    # LLaVA-NeXT-7B (Vicuna), one 672x672 image: 576 + 2304 + 48 newlines = 2928 visual tokens
    "llava-next-7b": dict(
        build=tiny_llava_next,
        model=dict(**LLAMA_7B, vocab_size=32064, image_size=336, patch_size=14),
        inputs=llava_next_inputs,
        sample=(22, [(672, 672)], 14),
        dtype="float16",
    ),
    # one 8-frame video of 112-pixel frames: 8 x (64 + 1) = 520 visual tokens
    "video-llava-cpu": dict(
        build=tiny_video_llava,
        model=dict(**CPU_DECODER, vocab_size=32064, image_size=112, patch_size=14),
        inputs=video_llava_inputs,
        sample=(35, 0, 1, 29),
        dtype="float32",
    ),
    # Video-LLaVA-7B, one 8-frame video of 224-pixel frames: 8 x (256 + 1) = 2056 visual tokens
    "video-llava-7b": dict(
        build=tiny_video_llava,
        model=dict(**LLAMA_7B, vocab_size=32064, image_size=224, patch_size=14),
        inputs=video_llava_inputs,
        sample=(22, 0, 1, 14),
        dtype="float16",
    ),
    # one 672x672 image: 48x48 patches, merged 2x2 = 576 visual tokens
    "qwen2-vl-cpu": dict(
        build=tiny_qwen2_vl,
        model=dict(**QWEN_CPU, **MROPE, version="2", vocab_size=32064),
        inputs=qwen2_vl_inputs,
        sample=(35, [(48, 48)], [], 29),
        dtype="float32",
    ),
    # Qwen2-VL-7B, one 896x896 image: 64x64 patches, merged 2x2 = 1024 visual tokens
    "qwen2-vl-7b": dict(
        build=tiny_qwen2_vl,
        model=dict(**QWEN_7B, **MROPE, version="2", vocab_size=152064),
        inputs=qwen2_vl_inputs,
        sample=(22, [(64, 64)], [], 14),
        dtype="bfloat16",
    ),
    "qwen2.5-vl-cpu": dict(
        build=tiny_qwen2_vl,
        model=dict(**QWEN_CPU, **MROPE, version="2.5", vocab_size=32064),
        inputs=qwen2_vl_inputs,
        sample=(35, [(48, 48)], [], 29),
        dtype="float32",
    ),
    "qwen2.5-vl-7b": dict(
        build=tiny_qwen2_vl,
        model=dict(**QWEN_7B, **MROPE, version="2.5", vocab_size=152064),
        inputs=qwen2_vl_inputs,
        sample=(22, [(64, 64)], [], 14),
        dtype="bfloat16",
    ),
}


def kv_of(key: str, output):
    return cache_bytes(output[1] if key == "c" else output.past_key_values)


def setup(args, preset: dict, build) -> tuple:
    """The run's device, dtype, sync and FastV method, (a) the preset's model built on the device and (b) a
    second module tree over its weights."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or preset["dtype"])
    torch.manual_seed(0)
    model_a = build(**preset["model"], dtype=dtype, attn_implementation="sdpa").to(device)
    return device, dtype, sync_for(device), gp.FastV(k=args.k, keep=args.keep), model_a, shared_copy(model_a)


def expected_kv(config, dtype: torch.dtype, k: int, n_tokens: int, kept_tokens: int) -> dict[str, int]:
    """KV-cache bytes of (a) the unmodified model and (b) FastV (``kept_tokens`` from layer ``k`` on)."""
    elem = torch.finfo(dtype).bits // 8
    layers = config.get_text_config(decoder=True).num_hidden_layers
    return {
        "a": kv_bytes(config, [n_tokens] * layers, elem),
        "b": kv_bytes(config, [n_tokens] * k + [kept_tokens] * (layers - k), elem),
    }


def median_ms(fn, sync, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after one warm-up run."""
    runs_ms = [timed(fn, sync)[0] * 1e3 for _ in range(repeats + 1)]
    return statistics.median(runs_ms[1:])


def variant_rows(times: dict, first: dict, outputs: dict, compiled: bool, expected: dict) -> list[dict]:
    """One row per variant of ``measure``'s results: spread, first call and compile time, KV-cache bytes."""
    rows = []
    for key, seconds in times.items():
        median = statistics.median(seconds)
        rows.append(
            dict(
                variant=key,
                name=VARIANTS[key],
                compiled=compiled,
                **spread_ms(seconds),
                first_call_s=first[key],
                compile_s=max(first[key] - median, 0.0) if compiled else None,
                kv_bytes=kv_of(key, outputs[key]),
                expected_kv_bytes=expected[key],
                times_ms=[t * 1e3 for t in seconds],
            )
        )
    return rows


def run_family(args, preset_name: str) -> dict:
    """Another family: (a) unmodified and (b) graphprune FastV, eager and (unless --no-compile) compiled."""
    preset = FAMILY_PRESETS[preset_name]
    start = time.perf_counter()
    device, dtype, sync, method, model_a, model_b = setup(args, preset, preset["build"])
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
    expected = expected_kv(model_a.config, dtype, method.k, n_tokens, kept_tokens)
    # the model's forward up to its decoder: vision, projector, embedding, positions
    vision_ms = median_ms(lambda: decoder_inputs(model_a, False, **inputs), sync, args.repeats)
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
                times, first, outputs = measure(callables, sync, args.repeats, label, VARIANTS)
            finally:
                gp.restore(model_b)
                lm_a.__dict__.pop("forward", None)
            rows += variant_rows(times, first, outputs, compiled, expected)
    return dict(
        preset=preset_name,
        model_class=type(model_a).__name__,
        device=str(device),
        device_name=device_name(device),
        threads=torch.get_num_threads(),
        dtype=str(dtype),
        method=dict(k=method.k, keep=method.keep),
        model=dict(preset["model"]),
        n_tokens=n_tokens,
        n_visual=n_visual,
        kept_tokens=kept_tokens,
        repeats=args.repeats,
        flops=dict(before=flops_before, after=flops_after, fraction=flops_after / flops_before),
        vision_and_embedding_ms=vision_ms,
        rows=rows,
        versions=dict(torch=torch.__version__, graphprune=gp.__version__),
    )
