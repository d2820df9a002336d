"""What graphprune needs to know about a model family: the adapter contract."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DecoderLayout:
    """Where things are inside a captured decoder graph; passes read it from ``gm.meta``.

    Module paths are as they appear in the nodes' ``nn_module_stack``, relative to the captured
    step module (whose decoder attribute is ``decoder``).
    """

    layers: str  # e.g. "decoder.layers": layer i is "decoder.layers.{i}"
    attention: str  # attention submodule of a layer, e.g. "self_attn"
    query_proj: str  # e.g. "q_proj"
    key_proj: str  # e.g. "k_proj"
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float  # softmax scale of the attention the method ranks by (self- or cross-attention)
    cross_attention_layers: tuple[int, ...] = ()  # indices of cross-attention layers (Mllama), in order
    cross_attention: str = "cross_attn"  # cross-attention submodule of those layers

    @property
    def self_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_layers) if i not in self.cross_attention_layers)


class ModelAdapter:
    """One model family. Subclasses say where the decoder is and which positions are visual."""

    name: str = ""
    model_classes: tuple[str, ...] = ()  # transformers class names this adapter accepts
    methods: tuple[type, ...] = ()  # pruning methods that fit this family

    def matches(self, model: nn.Module) -> bool:
        return type(model).__name__ in self.model_classes

    def decoder(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layout(self, model: nn.Module) -> DecoderLayout:
        raise NotImplementedError

    def visual_mask(
        self, model: nn.Module, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``[B, N]`` bool, True at visual positions; None when the call holds no token ids or embeddings."""
        raise NotImplementedError
