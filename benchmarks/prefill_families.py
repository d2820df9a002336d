"""``benchmarks/prefill.py``'s other families (LLaVA-NeXT, Video-LLaVA, Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision,
InternVL3, SmolVLM2, Qwen3-VL, Gemma 3): presets and run; and the KV-cache, timing and row helpers that both runs
use."""

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
    gemma3_inputs,
    idefics3_inputs,
    internvl_inputs,
    llava_next_inputs,
    llava_onevision_inputs,
    measure,
    qwen2_vl_inputs,
    qwen3_vl_inputs,
    shared_copy,
    spread_ms,
    sync_for,
    timed,
    tiny_gemma3,
    tiny_idefics3,
    tiny_internvl,
    tiny_llava_next,
    tiny_llava_onevision,
    tiny_qwen2_vl,
    tiny_qwen3_vl,
    tiny_video_llava,
    video_llava_inputs,
)
from benchmarks.prefill_report import VARIANTS
from graphprune.flops import kv_bytes
from graphprune.methods import n_keep
from graphprune.models import adapter_for
from graphprune.reference.fastv import decoder_inputs

# SmolVLM2-2.2B's decoder (SmolLM2-1.7B: Llama, MHA 32/32, head_dim 64) and Qwen3-VL-8B's (Qwen3-8B: GQA 32/8,
# head_dim 128); InternVL3-8B's (Qwen2.5-7B) and LLaVA-OneVision-7B's (Qwen2-7B) are QWEN_7B.
SMOLLM2_1_7B = dict(hidden_size=2048, intermediate_size=8192, num_layers=24, num_heads=32, num_kv_heads=32)
QWEN3_8B = dict(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32, num_kv_heads=8)
# Gemma 3 4B's decoder (34 layers, GQA 8/4, head_dim 256: not hidden / heads; every 6th layer global, the others
# sliding with a 1024-token window) and image side (a 896-pixel SigLIP image, 64x64 patches pooled to 256 tokens)
GEMMA3_4B = dict(hidden_size=2560, intermediate_size=10240, num_layers=34, num_heads=8, num_kv_heads=4, head_dim=256)
GEMMA3 = dict(sliding_window=1024, global_every=6, image_size=896, patch_size=14, tokens_per_image=256)
# Qwen3-VL-8B's interleaved M-RoPE sections and its 3 DeepStack layers (vision blocks 8, 16, 24 feed decoder 0-2)
QWEN3_VL = dict(mrope_section=(24, 20, 20), deepstack_layers=3)

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
    # one 336x336 image on 168-pixel SigLIP crops (12x12 = 144 patches): base 144 + 2x2 grid 576 + 24 newlines = 744
    "llava-onevision-cpu": dict(
        build=tiny_llava_onevision,
        model=dict(**QWEN_CPU, vocab_size=32064, image_size=168, patch_size=14),
        inputs=llava_onevision_inputs,
        sample=(35, [(336, 336)], 0, 28),
        dtype="float32",
    ),
    # LLaVA-OneVision-7B (Qwen2-7B), one 768x768 image on 384-pixel crops (27x27 = 729 patches), anyres_max_9:
    # base 729 + 2x2 grid 54x54 = 2916 + 54 newlines = 3699 visual tokens
    "llava-onevision-7b": dict(
        build=tiny_llava_onevision,
        model=dict(**QWEN_7B, vocab_size=152128, image_size=384, patch_size=14),
        inputs=llava_onevision_inputs,
        sample=(22, [(768, 768)], 0, 13),
        dtype="bfloat16",
    ),
    # one 896x448 image: 2x1 tiles + thumbnail of 448 pixels, 32x32 patches pixel-shuffled by 0.5 = 3 x 256 = 768
    "internvl-cpu": dict(
        build=tiny_internvl,
        model=dict(**QWEN_CPU, vocab_size=32064, image_size=448, patch_size=14),
        inputs=internvl_inputs,
        sample=(34, [3], 28),
        dtype="float32",
    ),
    # InternVL3-8B (Qwen2.5-7B), one 896x896 image: 2x2 tiles + thumbnail = 5 x 256 = 1280 visual tokens
    "internvl3-8b": dict(
        build=tiny_internvl,
        model=dict(**QWEN_7B, vocab_size=151674, image_size=448, patch_size=14),
        inputs=internvl_inputs,
        sample=(21, [5], 13),
        dtype="bfloat16",
    ),
    # SmolVLM2's 384-pixel tile gives 27x27 patches, pixel-shuffled by 3 = 81 tokens; the tiny builder shuffles by 2,
    # so 252-pixel tiles (18x18 patches) give the same 81. One 1152x768 image: 2x3 tiles + global = 7 x 81 = 567
    "smolvlm-cpu": dict(
        build=tiny_idefics3,
        model=dict(**CPU_DECODER, version="smolvlm", vocab_size=32064, image_size=252, patch_size=14),
        inputs=idefics3_inputs,
        sample=(35, [(2, 3)], 29),
        dtype="float32",
    ),
    # SmolVLM2-2.2B (SmolLM2-1.7B), one image resized to 1536x1536: 4x4 tiles + global = 17 x 81 = 1377 visual tokens
    "smolvlm2-2.2b": dict(
        build=tiny_idefics3,
        model=dict(**SMOLLM2_1_7B, version="smolvlm", vocab_size=49280, image_size=252, patch_size=14),
        inputs=idefics3_inputs,
        sample=(22, [(4, 4)], 14),
        dtype="bfloat16",
    ),
    # one 768x768 image: 48x48 patches of 16 pixels, merged 2x2 = 576 visual tokens; DeepStack into layers 0-2
    "qwen3-vl-cpu": dict(
        build=tiny_qwen3_vl,
        model=dict(**QWEN_CPU, **QWEN3_VL, vocab_size=32064),
        inputs=qwen3_vl_inputs,
        sample=(35, [(48, 48)], [], 29),
        dtype="float32",
    ),
    # Qwen3-VL-8B, one 1024x1024 image: 64x64 patches of 16 pixels, merged 2x2 = 1024 visual tokens
    "qwen3-vl-8b": dict(
        build=tiny_qwen3_vl,
        model=dict(**QWEN3_8B, **QWEN3_VL, vocab_size=151936),
        inputs=qwen3_vl_inputs,
        sample=(22, [(64, 64)], [], 14),
        dtype="bfloat16",
    ),
    # one image: 256 visual tokens between <start_of_image> and <end_of_image>, one text token after; the window
    # (1024) is longer than the prompt, as in the 4B model at this length
    "gemma3-cpu": dict(
        build=tiny_gemma3,
        model=dict(**CPU_DECODER, **GEMMA3, vocab_size=32064),
        inputs=gemma3_inputs,
        sample=(36, 1, 27),
        dtype="float32",
    ),
    # Gemma 3 4B, one 896x896 image: 256 visual tokens
    "gemma3-4b": dict(
        build=tiny_gemma3,
        model=dict(**GEMMA3_4B, **GEMMA3, vocab_size=262208),
        inputs=gemma3_inputs,
        sample=(22, 1, 13),
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
    adapter = adapter_for(model_a)
    n_visual = int(adapter.visual_mask(model_a, inputs["input_ids"], None).sum())
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
    lm_a = adapter.decoder(model_a)  # the unmodified model's decoder, compiled for (a)
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
