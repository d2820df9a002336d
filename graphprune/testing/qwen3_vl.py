"""Tiny Qwen3-VL and Qwen3-VL-MoE (DeepStack, interleaved M-RoPE; images and videos as patch rows) and their inputs."""

from __future__ import annotations

import math

import torch
from transformers import (
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from .common import (
    IMAGE_TOKEN_ID,
    QWEN2_VL_TOKEN_IDS,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
    TinyDecoder,
    sample_generators,
    text_config,
    text_ids,
)
from .qwen2_vl import mrope_inputs


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
    vision = model.config.vision_config
    vocab, merge = model.config.text_config.vocab_size, vision.spatial_merge_size**2
    patch_features = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    rows, token_types = [], []
    visuals = {"image": ([], []), "video": ([], [])}  # per kind: grids, patch rows
    for (before, images, videos, after), generator in sample_generators(samples, seed):
        row, types = text_ids(generator, vocab, before), [0] * before
        for kind, grid in [("image", (1, *g)) for g in images] + [("video", g) for g in videos]:
            token, type_id = (IMAGE_TOKEN_ID, 1) if kind == "image" else (VIDEO_TOKEN_ID, 2)
            count = grid[1] * grid[2] // merge
            for _ in range(grid[0]):  # a video: one block per temporal patch, after its timestamp
                stamp = text_ids(generator, vocab, 1) if kind == "video" else []
                row += stamp + [VISION_START_TOKEN_ID] + [token] * count + [VISION_END_TOKEN_ID]
                types += [0] * len(stamp) + [0] + [type_id] * count + [0]
            visuals[kind][0].append(grid)
            visuals[kind][1].append(torch.randn((math.prod(grid), patch_features), generator=generator))
        rows.append(row + text_ids(generator, vocab, after))
        token_types.append(types + [0] * after)
    return mrope_inputs(model, rows, token_types, visuals)
