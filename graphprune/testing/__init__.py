"""Small random-weight models of the real transformers classes, and inputs for them (tests, demo, benchmarks).

Each family's builders live in its folder (``graphprune/families/<name>/testing.py``, its record's ``testing``)
and are read from here by name (``from graphprune.testing import tiny_llava``); what they share (the decoder's
shape and build options, :class:`TinyDecoder`; token ids, seeding, weight init, text ids, left padding) is in
``common``, the contract suite's case type in ``contract``.
"""

import importlib

from ..families import FAMILIES
from .common import (
    FIRST_TEXT_ID,
    IMAGE_TOKEN_ID,
    PAD_TOKEN_ID,
    QWEN2_VL_TOKEN_IDS,
    VIDEO_TOKEN_ID,
    VISION_END_TOKEN_ID,
    VISION_START_TOKEN_ID,
    TinyDecoder,
    llama_text_config,
    text_config,
)
from .contract import ContractCase


def family_modules() -> list:
    """Every family's testing module (imported on first use), in the order of ``families.FAMILIES``."""
    return [importlib.import_module(family.testing) for family in FAMILIES]


def __getattr__(name: str):
    """A family's builder: the attribute ``name`` of the testing module whose ``__all__`` lists it."""
    for module in family_modules():
        if name in module.__all__:
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *(name for module in family_modules() for name in module.__all__)})


__all__ = [
    "FIRST_TEXT_ID",
    "IMAGE_TOKEN_ID",
    "PAD_TOKEN_ID",
    "QWEN2_VL_TOKEN_IDS",
    "VIDEO_TOKEN_ID",
    "VISION_END_TOKEN_ID",
    "VISION_START_TOKEN_ID",
    "ContractCase",
    "TinyDecoder",
    "family_modules",
    "llama_text_config",
    "text_config",
]
