"""Tiny Qwen3-VL and Qwen3-VL-MoE (DeepStack, interleaved M-RoPE; images and videos as patch rows) and their inputs."""

from __future__ import annotations

import functools
import math

import torch
from transformers import (
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from ...methods import FastV
from ...testing.common import QWEN2_VL_TOKEN_IDS, TinyDecoder, text_config
from ...testing.contract import ContractCase
from ..qwen2_vl.testing import QWEN_SAMPLES, mrope_inputs


def tiny_qwen3_vl(
    *, moe: bool = False, mrope_section: tuple[int, int, int] = (4, 2, 2), deepstack_layers: int = 3, **decoder
) -> Qwen3VLForConditionalGeneration | Qwen3VLMoeForConditionalGeneration:
    """A ``Qwen3VLForConditionalGeneration`` (``moe=True``: ``Qwen3VLMoeForConditionalGeneration``, 4 experts,
    2 per token; ``decoder``: :class:`TinyDecoder`'s keywords) whose vision tower (``deepstack_layers`` blocks)
    feeds DeepStack features to the first ``deepstack_layers`` decoder layers; ``sum(mrope_section)`` must be half
    the head dim. Patch 2, spatial merge 2, temporal patch 2: a ``(t, h, w)`` patch grid gives ``t·h·w / 4``
    tokens."""
    tiny = TinyDecoder.of(decoder)
    rope = tiny.mrope(mrope_section, mrope_interleaved=True)
    text = text_config(*tiny.shape, head_dim=tiny.head_dim, max_position_embeddings=4096, rope_parameters=rope)
    if moe:
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=tiny.intermediate_size // 2)
    vision = dict(
        depth=deepstack_layers,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=2,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=tiny.hidden_size,
        num_position_embeddings=16,
        deepstack_visual_indexes=list(range(deepstack_layers)),
    )
    config_class, model_class = (
        (Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration)
        if moe
        else (Qwen3VLConfig, Qwen3VLForConditionalGeneration)
    )
    model = tiny.make(model_class, config_class(text_config=text, vision_config=vision, **QWEN2_VL_TOKEN_IDS))
    if moe:  # experts and router are plain parameters, not nn.Linear: the same std 1/sqrt(fan_in) as finish's
        generator = torch.Generator(tiny.device).manual_seed(tiny.seed)
        with torch.no_grad():
            for name, weight in model.model.language_model.named_parameters():
                if name.endswith(("experts.gate_up_proj", "experts.down_proj", "mlp.gate.weight")):
                    weight.normal_(0.0, 1 / math.sqrt(weight.shape[-1]), generator=generator)
    return tiny.finish(model)


def qwen3_vl_inputs(
    model: Qwen3VLForConditionalGeneration | Qwen3VLMoeForConditionalGeneration,
    samples: list[tuple[int, list[tuple[int, int]], list[tuple[int, int, int]], int]],
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, images, videos, text_after)``.

    An image is its ``(h, w)`` patch grid, a video its ``(t, h, w)`` grid (``2t`` frames), h and w even.
    An image sits between vision start and end tokens; a video, as Qwen3-VL's processor writes it, is
    ``t`` such blocks of ``h·w / 4`` tokens, each after a timestamp (one text token). Images come first.
    Also returns the patch rows (``pixel_values``, ``pixel_values_videos``), ``image_grid_thw`` /
    ``video_grid_thw`` and ``mm_token_type_ids`` (0 text, 1 image, 2 video).
    """
    return mrope_inputs(model, samples, seed, timestamps=True)


# DeepStack into layers 0-2 of 4: k below (1), at (2) and above (3) the last DeepStack layer
CONTRACT = {
    "Qwen3VLForConditionalGeneration": ContractCase(
        tiny_qwen3_vl,
        qwen3_vl_inputs,
        QWEN_SAMPLES,
        [(4, [], [], 3), (6, [], [], 2)],
        (FastV(k=1, keep=0.5), FastV(k=2, keep=0.25, query="mean"), FastV(k=3, keep=0.5)),
        (FastV(k=2, keep=0.5),),
    ),
    "Qwen3VLMoeForConditionalGeneration": ContractCase(
        functools.partial(tiny_qwen3_vl, moe=True),
        qwen3_vl_inputs,
        QWEN_SAMPLES,
        [(4, [], [], 3), (6, [], [], 2)],
        (FastV(k=2, keep=0.5),),
        (FastV(k=2, keep=0.5),),
    ),
}

__all__ = ["qwen3_vl_inputs", "tiny_qwen3_vl"]
