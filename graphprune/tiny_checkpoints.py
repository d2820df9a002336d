"""Tiny random-weight VLMs saved as hub-layout checkpoint folders with a real processor (vLLM tests, benchmarks).

vLLM loads models from a folder: ``config.json``, safetensors in the hub's key layout (LLaVA's vision tower under
``vision_tower.vision_model.*``, which transformers 5 no longer writes) and the processor files. The tokenizer is a
``tokenizers`` WordLevel model over ``<pad> <s> </s> <image> <video> <|vision_start|> <|vision_end|> ... w8 w9 ...``
(token ``wN`` is id N), split on whitespace, so ``prompt_ids`` and ``prompt_text`` convert both ways.

What every family shares is here; each family's savers (``save_<family>``, its processor's) are in its folder's
``checkpoint.py`` (``graphprune/families/<name>/``, its record's ``checkpoint``) and are read from here by name.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .families import FAMILIES
from .testing import (
    FIRST_TEXT_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
)

SPECIAL = {
    PAD_TOKEN_ID: "<pad>",
    1: "<s>",
    2: "</s>",
    IMAGE_TOKEN_ID: "<image>",
    VIDEO_TOKEN_ID: "<video>",
    VISION_START_TOKEN_ID: "<|vision_start|>",
    VISION_END_TOKEN_ID: "<|vision_end|>",
    7: "<unk>",
}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the messages' text, back to back


def tokenizer(
    vocab_size: int,
    image_token: str = "<image>",
    video_token: str = "<video>",
    named: dict[str, str] | None = None,
    vision_bounds: tuple[str, str] = ("<|vision_start|>", "<|vision_end|>"),
) -> PreTrainedTokenizerFast:
    """The WordLevel tokenizer described in the module docstring; the visual placeholders and the tokens around
    an image (``vision_bounds``) get the given names. ``named`` maps tokenizer attributes to special tokens
    (InternVL's ``start_image_token``: ``<img>``, ...); a token not in the vocab yet takes the place of the highest
    ``wN``."""
    start, end = vision_bounds
    names = dict(SPECIAL) | {
        IMAGE_TOKEN_ID: image_token,
        VIDEO_TOKEN_ID: video_token,
        VISION_START_TOKEN_ID: start,
        VISION_END_TOKEN_ID: end,
    }
    added = [token for token in dict.fromkeys((named or {}).values()) if token not in names.values()]
    names |= {vocab_size - len(added) + i: token for i, token in enumerate(added)}
    vocab = {names.get(i, f"w{i}"): i for i in range(vocab_size)}
    model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=model,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens=named or {},
    )
    fast.add_special_tokens({"additional_special_tokens": [names[i] for i in sorted(names) if i > 2 and i != 7]})
    return fast


def prompt_text(ids: list[int]) -> str:
    """Text whose tokens are ``ids`` (text ids only, each >= ``FIRST_TEXT_ID``)."""
    assert all(i >= FIRST_TEXT_ID for i in ids)
    return " ".join(f"w{i}" for i in ids)


def clip_hub_key(key: str) -> str:
    """A LLaVA-family key as the hub has it: the CLIP tower under ``vision_tower.vision_model.*``."""
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1)


def rewrite_keys(path: Path, rename, convert=lambda key, tensor: tensor) -> None:
    """Rename every saved tensor's key (``rename(key)``) and convert it (``convert(key, tensor)``, the old key)."""
    from safetensors import safe_open

    for file in path.glob("*.safetensors"):
        with safe_open(file, "pt") as handle:
            tensors = {rename(key): convert(key, handle.get_tensor(key)) for key in handle.keys()}  # noqa: SIM118
        save_file({key: value.contiguous() for key, value in tensors.items()}, file, metadata={"format": "pt"})


def random_image(seed: int, size: int, width: int | None = None):
    """A random RGB PIL image, ``size`` pixels high and ``width`` (default: ``size``) wide."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, width or size, 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def family_modules() -> list:
    """Every family's ``checkpoint`` module that it has (imported on first use)."""
    return [importlib.import_module(family.checkpoint) for family in FAMILIES if family.checkpoint]


def __getattr__(name: str):
    """A family's saver: the attribute ``name`` of the checkpoint module whose ``__all__`` lists it."""
    for module in family_modules():
        if name in module.__all__:
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
