"""Model adapters, one per architecture family, and the registry that picks one for a model."""

from __future__ import annotations

from torch import nn

from .base import DecoderLayout, ModelAdapter
from .gemma3 import Gemma3Adapter
from .idefics3 import Idefics3Adapter
from .internvl import InternVLAdapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .mllama import MllamaAdapter
from .qwen2_vl import Qwen2VLAdapter
from .qwen3_vl import Qwen3VLAdapter
from .video_llava import VideoLlavaAdapter

ADAPTERS: tuple[ModelAdapter, ...] = (
    LlavaAdapter(),
    LlavaNextAdapter(),
    LlavaOnevisionAdapter(),
    VideoLlavaAdapter(),
    Qwen2VLAdapter(),
    Qwen3VLAdapter(),
    InternVLAdapter(),
    Idefics3Adapter(),
    MllamaAdapter(),
    Gemma3Adapter(),
)
# classes graphprune knows and refuses, with the reason (models/<family>.py says what is missing)
REFUSED: dict[str, str] = {}


class UnsupportedModelError(TypeError):
    """The model is not of a class that graphprune has an adapter for."""


def supported_classes() -> list[str]:
    return sorted(name for adapter in ADAPTERS for name in adapter.model_classes)


def adapter_for(model: nn.Module) -> ModelAdapter:
    """The adapter registered for ``model``'s class; ``UnsupportedModelError`` naming the supported ones if none."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    name = type(model).__name__
    reason = f" yet: {REFUSED[name]}" if name in REFUSED else ""
    raise UnsupportedModelError(
        f"graphprune does not support {name}{reason}; supported model classes: {', '.join(supported_classes())}"
    )


__all__ = ["ADAPTERS", "DecoderLayout", "ModelAdapter", "UnsupportedModelError", "adapter_for", "supported_classes"]
