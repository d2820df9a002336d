"""The model adapters, one per family (``graphprune/families/<name>/adapter.py``, named by the family's record),
and the lookup that picks one for a model."""

from __future__ import annotations

import functools

from torch import nn

from ..families import FAMILIES, Family, family_of_class, resolve
from .base import DecoderLayout, ModelAdapter


class UnsupportedModelError(TypeError):
    """The model is not of a class that graphprune has an adapter for."""


@functools.cache
def _adapter(family: Family) -> ModelAdapter:
    return resolve(family.adapter)(family)


def adapters() -> tuple[ModelAdapter, ...]:
    """Every family's adapter, in the order of ``families.FAMILIES``."""
    return tuple(_adapter(family) for family in FAMILIES)


def supported_classes() -> list[str]:
    return sorted(name for family in FAMILIES for name in family.model_classes)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter of the family that accepts ``model``'s class; ``UnsupportedModelError`` naming the supported
    classes if none."""
    family = family_of_class(type(model).__name__)
    if family is None:
        raise UnsupportedModelError(
            f"graphprune does not support {type(model).__name__}; supported model classes: "
            f"{', '.join(supported_classes())}"
        )
    return _adapter(family)


__all__ = ["DecoderLayout", "ModelAdapter", "UnsupportedModelError", "adapter_for", "adapters", "supported_classes"]
