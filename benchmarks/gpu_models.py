"""``benchmarks/gpu_suite.py``'s models, built on the device in their dtype: LLaVA-1.5-7B and Qwen2-VL-7B (configs
here, real vision towers) and the newer families at ``benchmarks/prefill_families.py``'s real-size presets (tiny
vision towers); for ``--smoke``, tiny decoders with the same token counts."""

from __future__ import annotations

import contextlib

import torch
from transformers import LlavaConfig, Qwen2VLConfig

from benchmarks.harness import (
    IMAGE_TOKEN_ID,
    LLAMA_7B,
    PAD_TOKEN_ID,
    QWEN2_VL_TOKEN_IDS,
    QWEN_7B,
    llama_text_config,
    text_config,
)
from benchmarks.prefill_families import FAMILY_PRESETS

# --smoke's decoder in place of a preset's (head_dim 128, as Qwen3-VL's M-RoPE sections need)
SMOKE_DECODER = dict(hidden_size=128, intermediate_size=128, num_layers=4, num_heads=1, num_kv_heads=1, vocab_size=512)


def llava_config(smoke: bool) -> LlavaConfig:
    text = dict(hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=4) if smoke else LLAMA_7B
    clip = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if not smoke:  # CLIP ViT-L/14-336
        clip = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
    return LlavaConfig(
        text_config=llama_text_config(**text, vocab_size=256 if smoke else 32064),
        vision_config=dict(model_type="clip_vision_model", image_size=336, patch_size=14, projection_dim=768, **clip),
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=256 if smoke else 32064,
    )


def qwen2_vl_config(smoke: bool) -> Qwen2VLConfig:
    shape = dict(hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4, num_kv_heads=2) if smoke else QWEN_7B
    text = text_config(
        **shape,
        vocab_size=256 if smoke else 152064,
        max_position_embeddings=32768,
        rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[2, 3, 3] if smoke else [16, 24, 24]),
        bos_token_id=None,
        eos_token_id=None,
    )
    vision = dict(depth=2, embed_dim=32, num_heads=2) if smoke else dict(depth=32, embed_dim=1280, num_heads=16)
    vision.update(mlp_ratio=4, hidden_size=shape["hidden_size"], patch_size=14, spatial_merge_size=2)
    vision.update(temporal_patch_size=2, in_channels=3)
    return Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        **QWEN2_VL_TOKEN_IDS,
    )


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def build(config, model_class, device: torch.device, dtype: torch.dtype):
    """Random weights made where they run, in their dtype; greedy generation of exactly the asked length."""
    with torch.device(device), _default_dtype(dtype):
        model = model_class(config)
    model.set_attn_implementation("sdpa")
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = None
    model.generation_config.do_sample = False
    return model.eval()


def preset_model(name: str, smoke: bool, device: torch.device, dtype: torch.dtype):
    """``FAMILY_PRESETS[name]``'s model (its builder's std ``1/sqrt(fan_in)`` weights), made on the device in
    ``dtype``; with ``smoke``, :data:`SMOKE_DECODER` in place of the preset's decoder."""
    preset = FAMILY_PRESETS[name]
    shape = {**preset["model"], **(SMOKE_DECODER if smoke else {})}
    with _default_dtype(dtype):
        model = preset["build"](**shape, attn_implementation="sdpa", dtype=dtype, device=device)
    model.generation_config.do_sample = False
    return model
