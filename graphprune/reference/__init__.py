"""Eager references of the methods, written from the papers' definitions and sharing no code with the passes."""

from .cross_attention_trim import CrossAttentionTrimReference, cross_attention_trim_reference, trimmed_mask_mode
from .dart import dart_reference, dart_reference_generate
from .fastv import FastVReference, fastv_reference, fastv_reference_generate
from .pdrop import PDropReference, pdrop_reference, pdrop_reference_generate

__all__ = [
    "CrossAttentionTrimReference",
    "FastVReference",
    "PDropReference",
    "cross_attention_trim_reference",
    "dart_reference",
    "dart_reference_generate",
    "fastv_reference",
    "fastv_reference_generate",
    "pdrop_reference",
    "pdrop_reference_generate",
    "trimmed_mask_mode",
]
