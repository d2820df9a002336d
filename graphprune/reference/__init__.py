"""Eager references of the methods, written from SPEC.md and sharing no code with the passes."""

from .fastv import FastVReference, fastv_reference, fastv_reference_generate

__all__ = ["FastVReference", "fastv_reference", "fastv_reference_generate"]
