"""Tiny Qwen2-VL and Qwen2.5-VL (M-RoPE; images and videos as patch rows) and their inputs."""

from __future__ import annotations

import functools
import math

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from ...methods import FastV
from ...testing.common import (
    IMAGE_TOKEN_ID,
    QWEN2_VL_TOKEN_IDS,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
    TinyDecoder,
    left_padded,
    sample_generators,
    text_config,
    text_ids,
)
from ...testing.contract import ContractCase


def tiny_qwen2_vl(
    *, version: str = "2", mrope_section: tuple[int, int, int] = (2, 3, 3), patch_size: int = 2, **decoder
) -> Qwen2VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration:
    """A ``Qwen2VLForConditionalGeneration`` (``version="2"``) or ``Qwen2_5_VLForConditionalGeneration``
    (``"2.5"``: windowed vision attention) with M-RoPE (``decoder``: :class:`TinyDecoder`'s keywords);
    ``sum(mrope_section)`` must be half the head dim. Spatial merge 2, temporal patch 2: a ``(t, h, w)`` patch
    grid gives ``t·h·w / 4`` tokens."""
    if version not in ("2", "2.5"):
        raise ValueError(f"graphprune.testing: version must be '2' or '2.5'; got {version!r}")
    tiny = TinyDecoder.of(decoder)
    rope = tiny.mrope(mrope_section)
    text = text_config(
        *tiny.shape, max_position_embeddings=4096, rope_parameters=rope, bos_token_id=None, eos_token_id=None
    )
    vision = dict(depth=2, num_heads=2, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision.update(embed_dim=32, mlp_ratio=2, hidden_size=tiny.hidden_size)
    else:
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        # windows of 2x2 merged tokens; block 1 attends globally
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=tiny.hidden_size)
        vision.update(window_size=4 * patch_size, fullatt_block_indexes=[1])
    config = config_class(text_config=text, vision_config=vision, **QWEN2_VL_TOKEN_IDS)
    return tiny.build(model_class, config)


def qwen2_vl_inputs(
    model: Qwen2VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration,
    samples: list[tuple[int, list[tuple[int, int]], list[tuple[int, int, int]], int]],
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, images, videos, text_after)``.

    An image is its ``(h, w)`` patch grid, a video its ``(t, h, w)`` grid (``2t`` frames), h and w
    even; each sits between vision start and end tokens, images first. Also returns the patch rows
    (``pixel_values``, ``pixel_values_videos``), ``image_grid_thw``/``video_grid_thw`` and
    ``mm_token_type_ids`` (0 text, 1 image, 2 video), as Qwen2-VL's processor does.
    """
    return mrope_inputs(model, samples, seed, timestamps=False)


def mrope_inputs(model, samples: list, seed: int, timestamps: bool) -> dict:
    """Qwen2-VL's and Qwen3-VL's inputs (see :func:`qwen2_vl_inputs`); with ``timestamps`` (Qwen3-VL) a ``(t, h, w)``
    video is ``t`` blocks of ``h·w / 4`` tokens, each after a timestamp (one text token)."""
    vision = model.config.vision_config
    vocab, merge = model.config.text_config.vocab_size, vision.spatial_merge_size**2
    patch_features = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    rows, token_types = [], []
    visuals = {"image": ([], []), "video": ([], [])}  # per kind: grids, patch rows
    for (before, images, videos, after), generator in sample_generators(samples, seed):
        row, types = text_ids(generator, vocab, before), [0] * before
        for kind, grid in [("image", (1, *g)) for g in images] + [("video", g) for g in videos]:
            token, type_id = (IMAGE_TOKEN_ID, 1) if kind == "image" else (VIDEO_TOKEN_ID, 2)
            stamped = timestamps and kind == "video"
            blocks = grid[0] if stamped else 1
            for _ in range(blocks):
                stamp = text_ids(generator, vocab, 1) if stamped else []
                count = math.prod(grid) // blocks // merge
                row += stamp + [VISION_START_TOKEN_ID] + [token] * count + [VISION_END_TOKEN_ID]
                types += [0] * len(stamp) + [0] + [type_id] * count + [0]
            visuals[kind][0].append(grid)
            visuals[kind][1].append(torch.randn((math.prod(grid), patch_features), generator=generator))
        rows.append(row + text_ids(generator, vocab, after))
        token_types.append(types + [0] * after)
    inputs = left_padded(rows)
    inputs["mm_token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    for b, types in enumerate(token_types):
        inputs["mm_token_type_ids"][b, inputs["input_ids"].shape[1] - len(types) :] = torch.tensor(types)
    for kind, pixels in [("image", "pixel_values"), ("video", "pixel_values_videos")]:
        grids, patch_rows = visuals[kind]
        if grids:
            inputs[pixels] = torch.cat(patch_rows).to(model.dtype)
            inputs[f"{kind}_grid_thw"] = torch.tensor(grids)
    return inputs


QWEN_SAMPLES = [(3, [(8, 8)], [], 4), (2, [(4, 8)], [(4, 4, 4)], 3), (5, [], [], 2)]  # 16 | 8 + 16 video | 0 visual

CONTRACT = {
    name: ContractCase(
        functools.partial(tiny_qwen2_vl, version=version),
        qwen2_vl_inputs,
        QWEN_SAMPLES,
        [(4, [], [], 3), (6, [], [], 2)],
        (FastV(k=2, keep=0.5), FastV(k=1, keep=0.25, query="mean")),
        (FastV(k=2, keep=0.5),),
    )
    for name, version in [("Qwen2VLForConditionalGeneration", "2"), ("Qwen2_5_VLForConditionalGeneration", "2.5")]
}

__all__ = ["QWEN_SAMPLES", "qwen2_vl_inputs", "tiny_qwen2_vl"]
