"""Eager references of the methods, written from the papers' definitions and sharing no code with the passes."""

from .cross_attention_trim import CrossAttentionTrimReference, cross_attention_trim_reference, trimmed_mask_mode
from .fastv import FastVReference, fastv_reference, fastv_reference_generate

__all__ = [
    "CrossAttentionTrimReference",
    "FastVReference",
    "cross_attention_trim_reference",
    "fastv_reference",
    "fastv_reference_generate",
    "trimmed_mask_mode",
]
