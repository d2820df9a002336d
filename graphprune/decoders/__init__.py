"""Decoder stand-ins, one module per method; importing a module registers its method (``graphprune.registry``)."""

from . import dart, pdrop  # noqa: F401  (register DART, PDrop)
from .base import GraphDecoder
from .cross_attention_trim import CrossAttentionTrimDecoder, TrimRecord
from .fastv import FastVDecoder, PrefillRecord
from .fastv_gemma3 import Gemma3FastVDecoder

__all__ = [
    "CrossAttentionTrimDecoder",
    "FastVDecoder",
    "Gemma3FastVDecoder",
    "GraphDecoder",
    "PrefillRecord",
    "TrimRecord",
]
