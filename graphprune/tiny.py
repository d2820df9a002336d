"""Small random-weight models of the real transformers classes, and inputs for them (tests, demo, benchmarks).

HF's default init (std 0.02) gives nearly flat attention, so top-k rankings would hinge on rounding
noise. Every ``tiny_*`` builder re-initialises weights with std ``1/sqrt(fan_in)`` and sharpens q/k,
so that score gaps at the top-k cut are far above float error. Every ``*_inputs`` builder returns a
left-padded batch (``input_ids``, ``attention_mask`` and the family's pixel inputs) in which samples
may have different visual counts.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    MllamaConfig,
    MllamaForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
)

PAD_TOKEN_ID = 0
IMAGE_TOKEN_ID = 3
VIDEO_TOKEN_ID = 4
VISION_START_TOKEN_ID = 5  # Qwen2-VL's <|vision_start|> and <|vision_end|>: text tokens around each image or video
VISION_END_TOKEN_ID = 6
FIRST_TEXT_ID = 8  # random text of the newer builders is drawn from [FIRST_TEXT_ID, vocab)


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
        text_config=_llama_text_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size),
        vision_config=_clip_config(image_size, patch_size),
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=vocab_size,
    )
    torch.manual_seed(seed)
    return _finish(LlavaForConditionalGeneration(config), seed, qk_gain, attn_implementation, dtype)


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
    inputs = _left_padded(rows)
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


def _left_padded(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _text(generator: torch.Generator, vocab: int, count: int) -> list[int]:
    return torch.randint(FIRST_TEXT_ID, vocab, (count,), generator=generator).tolist()


def _llama_text_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size) -> dict:
    return dict(
        model_type="llama",
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        pad_token_id=PAD_TOKEN_ID,
    )


def _clip_config(image_size: int, patch_size: int) -> dict:
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )


def _finish(model: nn.Module, seed: int, qk_gain: float, attn_implementation: str, dtype: torch.dtype) -> nn.Module:
    _sharpen(model, torch.Generator().manual_seed(seed), qk_gain)
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = None
    return model.to(dtype).eval()


def tiny_llava_next(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    image_size: int = 16,
    patch_size: int = 4,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    qk_gain: float = 2.0,
) -> LlavaNextForConditionalGeneration:
    """A ``LlavaNextForConditionalGeneration`` (Llama decoder, CLIP tower of ``(image_size / patch_size)²``
    patches per crop) whose any-resolution grids are 1x2, 2x1 and 2x2 crops; in eval mode."""
    config = LlavaNextConfig(
        text_config=_llama_text_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size),
        vision_config=_clip_config(image_size, patch_size),
        image_grid_pinpoints=[[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size] * 2],
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=vocab_size,
    )
    torch.manual_seed(seed)
    return _finish(LlavaNextForConditionalGeneration(config), seed, qk_gain, attn_implementation, dtype)


@torch.no_grad()
def llava_next_inputs(
    model: LlavaNextForConditionalGeneration, samples: list[tuple[int, list[tuple[int, int]], int]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, image sizes (height, width) in pixels, text_after)``.

    An image's token count is what LLaVA-NeXT's any-resolution packing gives for its size (base crop,
    unpadded grid, one newline per grid row), counted by the model's own ``get_image_features``.
    Images of a sample are separated by one text token; ``pixel_values`` is ``[images, crops, 3, H, W]``
    (zero crops pad images with fewer). Sample i is drawn with seed ``seed + i``, so
    ``llava_next_inputs(model, [samples[i]], seed + i)`` is sample i alone.
    """
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    config = model.config
    vocab, side = config.text_config.vocab_size, config.vision_config.image_size
    texts, crops = [], []
    for i, (before, sizes, after) in enumerate(samples):
        generator = torch.Generator().manual_seed(seed + i)
        texts.append(
            (_text(generator, vocab, before), _text(generator, vocab, len(sizes)), _text(generator, vocab, after))
        )
        for size in sizes:
            count = image_size_to_num_patches(size, config.image_grid_pinpoints, side)
            crops.append(torch.randn((count, 3, side, side), generator=generator).to(model.dtype))
    sizes = [size for _, image_sizes, _ in samples for size in image_sizes]
    inputs = {}
    if sizes:
        pixel_values = torch.zeros((len(crops), max(len(c) for c in crops), 3, side, side), dtype=model.dtype)
        for image, image_crops in enumerate(crops):
            pixel_values[image, : len(image_crops)] = image_crops
        inputs = {"pixel_values": pixel_values, "image_sizes": torch.tensor(sizes)}
        features = model.model.get_image_features(**inputs).pooler_output
        counts = iter([len(feature) for feature in features])
    rows = []
    for (before, separators, after), (_, image_sizes, _) in zip(texts, samples, strict=True):
        row = list(before)
        for index in range(len(image_sizes)):
            row += [IMAGE_TOKEN_ID] * next(counts) + separators[index : index + 1] * (index < len(image_sizes) - 1)
        rows.append(row + after)
    return {**_left_padded(rows), **inputs}


def tiny_video_llava(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    image_size: int = 16,
    patch_size: int = 4,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    qk_gain: float = 2.0,
) -> VideoLlavaForConditionalGeneration:
    """A ``VideoLlavaForConditionalGeneration`` (Llama decoder, CLIP image and video towers): an image
    gives ``(image_size / patch_size)²`` tokens, a video that plus one (CLS) per frame; in eval mode."""
    config = VideoLlavaConfig(
        text_config=_llama_text_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size),
        vision_config=_clip_config(image_size, patch_size),
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
        vocab_size=vocab_size,
    )
    torch.manual_seed(seed)
    return _finish(VideoLlavaForConditionalGeneration(config), seed, qk_gain, attn_implementation, dtype)


def video_llava_inputs(
    model: VideoLlavaForConditionalGeneration,
    samples: list[tuple[int, int, int, int]],
    frames: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, n_images, n_videos, text_after)``.

    Images come first, then videos, each followed by one text token. ``pixel_values_images`` is
    ``[images, 3, H, W]``, ``pixel_values_videos`` ``[videos, frames, 3, H, W]``, in sample order.
    Sample i is drawn with seed ``seed + i``: ``video_llava_inputs(model, [samples[i]], frames, seed + i)``
    is sample i alone.
    """
    vision = model.config.vision_config
    vocab, side = model.config.text_config.vocab_size, vision.image_size
    patches = (side // vision.patch_size) ** 2
    rows, images, videos = [], [], []
    for i, (before, n_images, n_videos, after) in enumerate(samples):
        generator = torch.Generator().manual_seed(seed + i)
        row = _text(generator, vocab, before)
        for token, count in [(IMAGE_TOKEN_ID, patches)] * n_images + [
            (VIDEO_TOKEN_ID, frames * (patches + 1))
        ] * n_videos:
            row += [token] * count + _text(generator, vocab, 1)
        rows.append(row + _text(generator, vocab, after))
        images += [torch.randn((3, side, side), generator=generator) for _ in range(n_images)]
        videos += [torch.randn((frames, 3, side, side), generator=generator) for _ in range(n_videos)]
    inputs = _left_padded(rows)
    if images:
        inputs["pixel_values_images"] = torch.stack(images).to(model.dtype)
    if videos:
        inputs["pixel_values_videos"] = torch.stack(videos).to(model.dtype)
    return inputs


def tiny_qwen2_vl(
    *,
    version: str = "2",
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 128,
    mrope_section: tuple[int, int, int] = (2, 3, 3),
    patch_size: int = 2,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    qk_gain: float = 2.0,
) -> Qwen2VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration:
    """A ``Qwen2VLForConditionalGeneration`` (``version="2"``) or ``Qwen2_5_VLForConditionalGeneration``
    (``"2.5"``: windowed vision attention) with M-RoPE; ``sum(mrope_section)`` must be half the head
    dim. Spatial merge 2, temporal patch 2: a ``(t, h, w)`` patch grid gives ``t·h·w / 4`` tokens."""
    if version not in ("2", "2.5"):
        raise ValueError(f"version must be '2' or '2.5'; got {version!r}")
    if 2 * sum(mrope_section) != hidden_size // num_heads:
        raise ValueError(
            f"2 * sum(mrope_section) must equal the head dim {hidden_size // num_heads}; got {mrope_section}"
        )
    text = dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=list(mrope_section)),
        pad_token_id=PAD_TOKEN_ID,
        bos_token_id=None,
        eos_token_id=None,
    )
    vision = dict(depth=2, num_heads=2, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
        vision.update(embed_dim=32, mlp_ratio=2, hidden_size=hidden_size)
    else:
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
        # windows of 2x2 merged tokens; block 1 attends globally
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=hidden_size)
        vision.update(window_size=4 * patch_size, fullatt_block_indexes=[1])
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE_TOKEN_ID,
        video_token_id=VIDEO_TOKEN_ID,
        vision_start_token_id=VISION_START_TOKEN_ID,
        vision_end_token_id=VISION_END_TOKEN_ID,
    )
    torch.manual_seed(seed)
    return _finish(model_class(config), seed, qk_gain, attn_implementation, dtype)


def qwen2_vl_inputs(
    model: Qwen2VLForConditionalGeneration | Qwen2_5_VLForConditionalGeneration,
    samples: list[tuple[int, list[tuple[int, int]], list[tuple[int, int, int]], int]],
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Left-padded inputs; each sample is ``(text_before, images, videos, text_after)``.

    An image is its ``(h, w)`` patch grid, a video its ``(t, h, w)`` grid (``2t`` frames), h and w
    even; each sits between vision start and end tokens, images first. Also returns the patch rows
    (``pixel_values``, ``pixel_values_videos``), ``image_grid_thw``/``video_grid_thw`` and
    ``mm_token_type_ids`` (0 text, 1 image, 2 video), as Qwen2-VL's processor does. Sample i is
    drawn with seed ``seed + i``: ``qwen2_vl_inputs(model, [samples[i]], seed + i)`` is sample i alone.
    """
    vision = model.config.vision_config
    vocab, merge = model.config.text_config.vocab_size, vision.spatial_merge_size**2
    patch_features = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    rows, token_types = [], []
    visuals = {"image": ([], []), "video": ([], [])}  # per kind: grids, patch rows
    for i, (before, images, videos, after) in enumerate(samples):
        generator = torch.Generator().manual_seed(seed + i)
        row, types = _text(generator, vocab, before), [0] * before
        for kind, grid, token, type_id in [("image", (1, *g), IMAGE_TOKEN_ID, 1) for g in images] + [
            ("video", g, VIDEO_TOKEN_ID, 2) for g in videos
        ]:
            count = math.prod(grid) // merge
            row += [VISION_START_TOKEN_ID] + [token] * count + [VISION_END_TOKEN_ID]
            types += [0] + [type_id] * count + [0]
            visuals[kind][0].append(grid)
            visuals[kind][1].append(torch.randn((math.prod(grid), patch_features), generator=generator))
        rows.append(row + _text(generator, vocab, after))
        token_types.append(types + [0] * after)
    inputs = _left_padded(rows)
    inputs["mm_token_type_ids"] = torch.zeros_like(inputs["input_ids"])
    for b, types in enumerate(token_types):
        inputs["mm_token_type_ids"][b, inputs["input_ids"].shape[1] - len(types) :] = torch.tensor(types)
    for kind, pixels in [("image", "pixel_values"), ("video", "pixel_values_videos")]:
        grids, patch_rows = visuals[kind]
        if grids:
            inputs[pixels] = torch.cat(patch_rows).to(model.dtype)
            inputs[f"{kind}_grid_thw"] = torch.tensor(grids)
    return inputs
