"""What every tiny builder shares: token ids, seeding and weight init, text ids, left padding.

HF's default init (std 0.02) gives nearly flat attention, so top-k rankings would hinge on rounding
noise. Every ``tiny_*`` builder seeds torch with ``seed``, builds the model and re-initialises its
weights (:func:`finish`) with std ``1/sqrt(fan_in)``, q/k scaled by ``qk_gain``, so that score gaps at
the top-k cut are far above float error. Every ``*_inputs`` builder returns a left-padded batch
(``input_ids``, ``attention_mask`` and the family's pixel inputs) in which samples may have different
visual counts; sample i is drawn with its own generator seeded ``seed + i`` (:func:`sample_generators`),
so ``inputs(model, [samples[i]], seed=seed + i)`` is sample i alone, and its text ids come from
:func:`text_ids`, all ``>= FIRST_TEXT_ID``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn

PAD_TOKEN_ID = 0
IMAGE_TOKEN_ID = 3
VIDEO_TOKEN_ID = 4
VISION_START_TOKEN_ID = 5  # Qwen2-VL's <|vision_start|> and <|vision_end|>: text tokens around each image or video
VISION_END_TOKEN_ID = 6
FIRST_TEXT_ID = 8  # ids below are special tokens; random text is drawn from [FIRST_TEXT_ID, vocab)
# the special token ids of a Qwen2-VL / Qwen2.5-VL config
QWEN2_VL_TOKEN_IDS = dict(
    image_token_id=IMAGE_TOKEN_ID,
    video_token_id=VIDEO_TOKEN_ID,
    vision_start_token_id=VISION_START_TOKEN_ID,
    vision_end_token_id=VISION_END_TOKEN_ID,
)


def build(model_class: type[nn.Module], config, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """``model_class(config)`` made on ``device`` after seeding torch with ``seed``."""
    torch.manual_seed(seed)
    with torch.device(device):
        return model_class(config)


def finish(
    model: nn.Module,
    seed: int,
    qk_gain: float,
    attn_implementation: str,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Re-initialise the weights (see the module docstring), set the attention kernel and greedy generation
    without eos; in eval mode and ``dtype``."""
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                gain = qk_gain if name.endswith(("q_proj", "k_proj")) else 1.0
                module.weight.normal_(0.0, gain / math.sqrt(module.in_features), generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)
    model.set_attn_implementation(attn_implementation)
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.generation_config.eos_token_id = None
    return model.to(dtype).eval()


def sample_generators(samples: list, seed: int) -> Iterator[tuple[object, torch.Generator]]:
    """Each sample with its own generator, seeded ``seed + i`` for sample i."""
    for i, sample in enumerate(samples):
        yield sample, torch.Generator().manual_seed(seed + i)


def text_ids(generator: torch.Generator, vocab: int, count: int) -> list[int]:
    """``count`` random text ids in ``[FIRST_TEXT_ID, vocab)``."""
    return torch.randint(FIRST_TEXT_ID, vocab, (count,), generator=generator).tolist()


def left_padded(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of the rows, left-padded to the longest."""
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def text_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size, **extra) -> dict:
    """The decoder config every family shares, from the builders' keyword names; plus ``extra``."""
    return dict(
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        vocab_size=vocab_size,
        pad_token_id=PAD_TOKEN_ID,
        **extra,
    )


def llama_text_config(hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size) -> dict:
    """The Llama decoder of the LLaVA families."""
    shape = (hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size)
    return text_config(*shape, model_type="llama", max_position_embeddings=4096)


def clip_config(image_size: int, patch_size: int) -> dict:
    """The CLIP vision tower of the LLaVA families."""
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
