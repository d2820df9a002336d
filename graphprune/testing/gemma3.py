"""Tiny Gemma 3 (``Gemma3ForConditionalGeneration``) and its inputs.

The decoder interleaves sliding-window layers with global ones (``layer_types``), and the tiny window is
smaller than the prompts, so the sliding rule matters; image tokens of one image attend each other
bidirectionally (``token_type_ids``, built by :func:`gemma3_inputs`).
"""

from __future__ import annotations

import torch
from transformers import Gemma3Config, Gemma3ForConditionalGeneration

from .common import IMAGE_TOKEN_ID, PAD_TOKEN_ID, build, finish, left_padded, sample_generators, text_config, text_ids

BOI_TOKEN_ID = 5  # <start_of_image> and <end_of_image>: text tokens around each image's tokens
EOI_TOKEN_ID = 6


def tiny_gemma3(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    sliding_window: int = 8,
    image_size: int = 32,
    patch_size: int = 8,
    tokens_per_image: int = 4,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    qk_gain: float = 2.0,
) -> Gemma3ForConditionalGeneration:
    """A ``Gemma3ForConditionalGeneration``: layers alternate sliding (window ``sliding_window``) and global,
    starting with a sliding one; a SigLIP tower pooled to ``tokens_per_image`` (a square) image tokens per image;
    in eval mode. Gemma 3 normalises queries and keys after their projections, so ``qk_gain`` scales the
    q/k norms' weights (not the projections') to keep attention far from flat."""
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(num_layers)]
    decoder = text_config(
        hidden_size,
        intermediate_size,
        num_layers,
        num_heads,
        num_kv_heads,
        vocab_size,
        model_type="gemma3_text",
        head_dim=hidden_size // num_heads,
        query_pre_attn_scalar=hidden_size // num_heads,
        sliding_window=sliding_window,
        layer_types=layer_types,
        max_position_embeddings=4096,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = Gemma3Config(
        text_config=decoder,
        vision_config=vision,
        mm_tokens_per_image=tokens_per_image,
        image_token_index=IMAGE_TOKEN_ID,
        boi_token_index=BOI_TOKEN_ID,
        eoi_token_index=EOI_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
    )
    model = finish(build(Gemma3ForConditionalGeneration, config, seed), seed, 1.0, attn_implementation, dtype)
    with torch.no_grad():
        for layer in model.model.language_model.layers:  # Gemma's RMSNorm scales by 1 + weight
            layer.self_attn.q_norm.weight.fill_(qk_gain - 1.0)
            layer.self_attn.k_norm.weight.fill_(qk_gain - 1.0)
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
