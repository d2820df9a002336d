"""Tiny Gemma 3 (``Gemma3ForConditionalGeneration``) and its inputs.

The decoder interleaves sliding-window layers with global ones (``layer_types``), and the tiny window is
smaller than the prompts, so the sliding rule matters; image tokens of one image attend each other
bidirectionally (``token_type_ids``, built by :func:`gemma3_inputs`).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from ...testing.common import (
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    TinyDecoder,
    left_padded,
    sample_generators,
    text_config,
    text_ids,
    vision_tower,
)

BOI_TOKEN_ID = 5  # <start_of_image> and <end_of_image>: text tokens around each image's tokens
EOI_TOKEN_ID = 6


def tiny_gemma3(
    *,
    sliding_window: int = 8,
    global_every: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    tokens_per_image: int = 4,
    head_dim: int | None = None,
    **decoder,
) -> Gemma3ForConditionalGeneration:
    """A ``Gemma3ForConditionalGeneration`` (``decoder``: :class:`TinyDecoder`'s keywords): every
    ``global_every``-th layer global, the others sliding (window ``sliding_window``), as Gemma 3's
    ``sliding_window_pattern`` (6 in the released models) lays them out; a SigLIP tower pooled to
    ``tokens_per_image`` (a square) image tokens per image; ``head_dim`` (Gemma 3's is not hidden / heads; default
    that) also the query scale; in eval mode. Gemma 3 normalises queries and keys after
    their projections, so ``qk_gain`` scales the q/k norms' weights (not the projections') to keep attention far
    from flat."""
    tiny = TinyDecoder.of(decoder)
    if not (isinstance(global_every, int) and global_every >= 1):
        raise ValueError(f"graphprune.testing: global_every must be an int >= 1; got {global_every!r}")
    layer_types = [
        "full_attention" if (i + 1) % global_every == 0 else "sliding_attention" for i in range(tiny.num_layers)
    ]
    text = text_config(
        *tiny.shape,
        model_type="gemma3_text",
        head_dim=head_dim or tiny.head_dim,
        query_pre_attn_scalar=head_dim or tiny.head_dim,
        sliding_window=sliding_window,
        layer_types=layer_types,
        max_position_embeddings=4096,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision_tower(image_size, patch_size, model_type="siglip_vision_model"),
        mm_tokens_per_image=tokens_per_image,
        image_token_index=IMAGE_TOKEN_ID,
        boi_token_index=BOI_TOKEN_ID,
        eoi_token_index=EOI_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
    )
    model = dataclasses.replace(tiny, qk_gain=1.0).build(Gemma3ForConditionalGeneration, config)
    with torch.no_grad():
        for layer in model.model.language_model.layers:  # Gemma's RMSNorm scales by 1 + weight
            layer.self_attn.q_norm.weight.fill_(tiny.qk_gain - 1.0)
            layer.self_attn.k_norm.weight.fill_(tiny.qk_gain - 1.0)
    return model


def gemma3_inputs(
    model: Gemma3ForConditionalGeneration, samples: list[tuple[int, int, int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, n_images, text_after)`` token counts.

    Every image is ``<start_of_image>``, ``mm_tokens_per_image`` image tokens, ``<end_of_image>``, then one text
    token; ``token_type_ids`` is 1 at image tokens (what Gemma 3's processor gives), ``pixel_values`` one entry per
    image in sample order.
    """
    config = model.config
    vocab, side = config.text_config.vocab_size, config.vision_config.image_size
    rows, images = [], []
    for (before, n_images, after), generator in sample_generators(samples, seed):
        row = text_ids(generator, vocab, before)
        for _ in range(n_images):
            row += [BOI_TOKEN_ID, *[IMAGE_TOKEN_ID] * config.mm_tokens_per_image, EOI_TOKEN_ID]
            row += text_ids(generator, vocab, 1)
        rows.append(row + text_ids(generator, vocab, after))
        images += [torch.randn((3, side, side), generator=generator) for _ in range(n_images)]
    inputs = left_padded(rows)
    inputs["token_type_ids"] = (inputs["input_ids"] == IMAGE_TOKEN_ID).long()
    if images:
        inputs["pixel_values"] = torch.stack(images).to(model.dtype)
    return inputs


CONTRACT: dict = {}  # the shared reference lacks Gemma 3's masks: its contract is a suite of its own
OWN_SUITE = "test_gemma3.py"  # in tests/

__all__ = ["gemma3_inputs", "tiny_gemma3"]
