"""Decoder stand-ins, one module per method; importing a module registers its method (``graphprune.registry``)."""

from .base import GraphDecoder
from .cross_attention_trim import CrossAttentionTrimDecoder, TrimRecord
from .fastv import FastVDecoder, PrefillRecord

__all__ = ["CrossAttentionTrimDecoder", "FastVDecoder", "GraphDecoder", "PrefillRecord", "TrimRecord"]
