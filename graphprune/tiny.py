"""Small random-weight models of the real transformers classes, and inputs for them (tests, demo, benchmarks).

HF's default init (std 0.02) gives nearly flat attention, so top-k rankings would hinge on rounding
noise. ``tiny_llava`` re-initialises weights with std ``1/sqrt(fan_in)`` and sharpens q/k, so that
score gaps at the top-k cut are far above float error.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration, MllamaConfig, MllamaForConditionalGeneration

PAD_TOKEN_ID = 0
IMAGE_TOKEN_ID = 3


def _sharpen(model: nn.Module, generator: torch.Generator, qk_gain: float) -> None:
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                gain = qk_gain if name.endswith(("q_proj", "k_proj")) else 1.0
                module.weight.normal_(0.0, gain / math.sqrt(module.in_features), generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)


def tiny_llava(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    image_size: int = 32,
    patch_size: int = 8,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    qk_gain: float = 2.0,
) -> LlavaForConditionalGeneration:
    """A ``LlavaForConditionalGeneration`` with a Llama decoder (GQA when ``num_kv_heads < num_heads``)
    and a CLIP vision tower giving ``(image_size / patch_size)²`` visual tokens per image; in eval mode."""
    config = LlavaConfig(
        text_config=dict(
            model_type="llama",
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            vocab_size=vocab_size,
            max_position_embeddings=4096,
            pad_token_id=PAD_TOKEN_ID,
        ),
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=vocab_size,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _sharpen(model, torch.Generator().manual_seed(seed), qk_gain)
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = None
    return model.to(dtype).eval()


def image_tokens_per_image(model: LlavaForConditionalGeneration) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def llava_inputs(
    model: LlavaForConditionalGeneration, samples: list[tuple[int, int, int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, n_images, text_after)`` token counts.

    Every image contributes ``image_tokens_per_image`` image tokens (one contiguous span per image,
    separated by a text token) and one ``pixel_values`` entry, in sample order as LLaVA expects.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    per_image = image_tokens_per_image(model)
    rows, n_images = [], 0
    for before, images, after in samples:
        row = torch.randint(IMAGE_TOKEN_ID + 1, vocab, (before,), generator=generator).tolist()
        for image in range(images):
            row += [IMAGE_TOKEN_ID] * per_image
            if image < images - 1:
                row += torch.randint(IMAGE_TOKEN_ID + 1, vocab, (1,), generator=generator).tolist()
        row += torch.randint(IMAGE_TOKEN_ID + 1, vocab, (after,), generator=generator).tolist()
        rows.append(row)
        n_images += images
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if n_images:
        vision = model.config.vision_config
        shape = (n_images, 3, vision.image_size, vision.image_size)
        inputs["pixel_values"] = torch.randn(shape, generator=generator).to(model.dtype)
    return inputs


def tiny_mllama(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 5,
    cross_attention_layers: tuple[int, ...] = (1, 3, 4),
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    image_size: int = 56,
    patch_size: int = 14,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    qk_gain: float = 2.0,
) -> MllamaForConditionalGeneration:
    """A ``MllamaForConditionalGeneration`` (LLaMA-3.2-Vision layout) with cross-attention at
    ``cross_attention_layers``, up to 4 tiles per image and ``(image_size / patch_size)² + 1``
    features per tile; in eval mode.

    The cross-attention gates (zero at init, which would make cross-attention a no-op) are set to 1,
    and the cross-attention q/k norms are scaled by ``qk_gain`` so that rankings are not flat. The
    weights are made on ``device`` (benchmarks build full-size models on the GPU).
    """
    config = MllamaConfig(
        text_config=dict(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            vocab_size=vocab_size,
            cross_attention_layers=list(cross_attention_layers),
            pad_token_id=PAD_TOKEN_ID,
            bos_token_id=1,
            eos_token_id=2,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_global_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            vision_output_dim=64,
            intermediate_layers_indices=[0],
        ),
        image_token_index=IMAGE_TOKEN_ID,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = MllamaForConditionalGeneration(config)
    _sharpen(model, torch.Generator(device).manual_seed(seed), qk_gain)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if hasattr(layer, "cross_attn"):
                layer.cross_attn_attn_gate.fill_(1.0)
                layer.cross_attn_mlp_gate.fill_(1.0)
                layer.cross_attn.q_norm.weight.fill_(qk_gain)
                layer.cross_attn.k_norm.weight.fill_(qk_gain)
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = None
    return model.to(dtype).eval()


def features_per_tile(model: MllamaForConditionalGeneration) -> int:
    return model.model.vision_model.num_patches


def mllama_inputs(
    model: MllamaForConditionalGeneration, samples: list[tuple[int, list[int], int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs as ``MllamaProcessor`` lays them out; each sample is
    ``(text_before, tiles_per_image, text_after)``, e.g. ``(3, [4, 2], 5)``: two images of 4 and 2 tiles.

    Each image is one image token; the text from it up to the next image (the last: to the end)
    attends to that image's real tiles. Padding tiles and missing images have zero pixels, aspect
    ratio id 0 and a zero mask, as the processor makes them.
    """
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.text_config.vocab_size
    vision = model.config.vision_config
    max_tiles = vision.max_num_tiles
    ratio_ids = {tiles: vision.supported_aspect_ratios.index([1, tiles]) + 1 for tiles in range(1, max_tiles + 1)}

    def text(n):
        return torch.randint(IMAGE_TOKEN_ID + 1, vocab, (n,), generator=generator).tolist()

    rows, image_starts = [], []
    for before, tiles, after in samples:
        row, starts = text(before), []
        for image in range(len(tiles)):
            starts.append(len(row))
            row += [IMAGE_TOKEN_ID] + (text(1) if image < len(tiles) - 1 else [])
        rows.append(row + text(after))
        image_starts.append(starts)
    length = max(len(row) for row in rows)
    max_images = max(1, max(len(tiles) for _, tiles, _ in samples))
    batch = len(rows)
    input_ids = torch.full((batch, length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    cross_attention_mask = torch.zeros(batch, length, max_images, max_tiles, dtype=torch.long)
    pixel_values = torch.zeros(batch, max_images, max_tiles, 3, vision.image_size, vision.image_size)
    aspect_ratio_ids = torch.zeros(batch, max_images, dtype=torch.long)
    aspect_ratio_mask = torch.zeros(batch, max_images, max_tiles, dtype=torch.long)
    for b, ((_, tiles, _), row, starts) in enumerate(zip(samples, rows, image_starts, strict=True)):
        offset = length - len(row)
        input_ids[b, offset:] = torch.tensor(row)
        attention_mask[b, offset:] = 1
        ends = [*starts[1:], len(row)][: len(starts)]
        for image, (n_tiles, start, end) in enumerate(zip(tiles, starts, ends, strict=True)):
            cross_attention_mask[b, offset + start : offset + end, image, :n_tiles] = 1
            tile_shape = (n_tiles, 3, vision.image_size, vision.image_size)
            pixel_values[b, image, :n_tiles] = torch.randn(tile_shape, generator=generator)
            aspect_ratio_ids[b, image] = ratio_ids[n_tiles]
            aspect_ratio_mask[b, image, :n_tiles] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if any(tiles for _, tiles, _ in samples):
        inputs |= {
            "pixel_values": pixel_values.to(model.dtype),
            "aspect_ratio_ids": aspect_ratio_ids,
            "aspect_ratio_mask": aspect_ratio_mask,
            "cross_attention_mask": cross_attention_mask,
        }
    return inputs
