"""What every tiny builder shares: the decoder's shape and build options (:class:`TinyDecoder`), token ids,
seeding and weight init, text ids, left padding.

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

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class TinyDecoder:
    """A tiny decoder's shape and build options: the keywords every ``tiny_*`` builder takes besides its own
    (vision side, version). ``device`` is where the weights are made."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 128
    attn_implementation: str = "sdpa"
    dtype: torch.dtype = torch.float32
    device: str | torch.device = "cpu"
    seed: int = 0
    qk_gain: float = 2.0

    @classmethod
    def of(cls, options: dict, **defaults) -> TinyDecoder:
        """The description from a builder's ``**options``; ``defaults`` are the builder's own (Mllama's 5 layers)."""
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(
                f"graphprune.testing: unknown tiny-builder keyword(s) {unknown}; the shared ones are {names}, "
                "plus the builder's own (its docstring)"
            )
        return cls(**{**defaults, **options})

    def __post_init__(self):
        if not all(isinstance(size, int) and size > 0 for size in self.shape):
            raise ValueError(f"graphprune.testing: a tiny decoder's sizes must be positive ints; got {self}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                "graphprune.testing: hidden_size must be a multiple of num_heads, and num_heads of num_kv_heads; "
                f"got {self.hidden_size}, {self.num_heads}, {self.num_kv_heads}"
            )

    @property
    def shape(self) -> tuple[int, ...]:
        """The sizes, in :func:`text_config`'s (and :func:`llama_text_config`'s) argument order."""
        return (
            self.hidden_size,
            self.intermediate_size,
            self.num_layers,
            self.num_heads,
            self.num_kv_heads,
            self.vocab_size,
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def mrope(self, mrope_section: tuple[int, int, int], **extra) -> dict:
        """M-RoPE's ``rope_parameters`` (Qwen2-VL, Qwen3-VL); ``2 * sum(mrope_section)`` must be the head dim."""
        if 2 * sum(mrope_section) != self.head_dim:
            raise ValueError(
                f"graphprune.testing: 2 * sum(mrope_section) must equal the head dim {self.head_dim}; "
                f"got {tuple(mrope_section)}"
            )
        return dict(rope_type="default", rope_theta=10000.0, mrope_section=list(mrope_section), **extra)

    def make(self, model_class: type[nn.Module], config) -> nn.Module:
        """``model_class(config)``, seeded and on ``device``, before :meth:`finish`."""
        return build(model_class, config, self.seed, self.device)

    def finish(self, model: nn.Module) -> nn.Module:
        """:func:`finish` with these options."""
        return finish(model, self.seed, self.qk_gain, self.attn_implementation, self.dtype, self.device)

    def build(self, model_class: type[nn.Module], config) -> nn.Module:
        """``model_class(config)`` made and finished: re-initialised, in eval mode and ``dtype``."""
        return self.finish(self.make(model_class, config))


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
    """The Llama decoder of the LLaVA and Idefics3 families."""
    shape = (hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, vocab_size)
    return text_config(*shape, model_type="llama", max_position_embeddings=4096)


def vision_tower(image_size, patch_size, **extra) -> dict:
    """The two-layer vision tower of every family but the Qwens (CLIP, SigLIP, InternViT, ...), plus ``extra``."""
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        **extra,
    )


def grid_pinpoints(image_size: int) -> list[list[int]]:
    """Any-resolution grids of 1x2, 2x1 and 2x2 crops (LLaVA-NeXT, LLaVA-OneVision)."""
    return [[image_size, 2 * image_size], [2 * image_size, image_size], [2 * image_size] * 2]


def clip_config(image_size: int, patch_size: int) -> dict:
    """The CLIP vision tower of the LLaVA families."""
    return vision_tower(image_size, patch_size, model_type="clip_vision_model")
